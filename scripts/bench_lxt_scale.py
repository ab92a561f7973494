#!/usr/bin/env python
"""Scale benchmark, reference side: AttnLRP (LXT 2.1, efficient variant) on any HF Llama checkpoint.

The protocol of scripts/bench_lxt.py (and of /work/shared/README.md), taken from a GGUF at 135M to
any HF Llama-layout directory (config.json + safetensors, sharded or not, usually bf16 on disk),
so that sparc3 can be run side by side on the same checkpoint, machine and tokens:
  lxt.efficient.monkey_patch(modeling_llama) before the model is built; weights loaded with
  torch_dtype=float32 (bf16 on disk is upcast), eager attention, no gradient checkpointing,
  no KV cache, model.eval(), torch threads 2 (--threads), batch 1;
  one attribution = inputs_embeds = embed(ids) (requires_grad) + forward + patched backward from
  the target + relevance R_W = W * dL/dW for every decoder nn.Linear weight (7 per layer).
As in bench_lxt.py, only those Linear weights (and inputs_embeds) require grad unless
--all-params-grad, grads are set to None between runs (outside the timing), and the products
W * grad are computed inside the timing as one fresh tensor per weight (--accumulate none).
bench_lxt.py does not add them to a running sum; --accumulate abs does what `sparc3 attribute`
does by default (an f32 running sum of |R| per weight, allocated once outside the timing and
added to layer by layer inside it), --accumulate signed the same with R.

Targets:
  last        argmax logit at the last position (the reference's target)
  next-token  sum over t < T-1 of logits[t, ids[t+1]]

Tokens: --ids FILE gives the samples: a JSON list of token-id lists, or JSONL with one list or one
{"ids": [...]} record per line (the calibration ids format sparc3 reads); timed run i uses sample
i cut to its first T ids (ids[i][:T]), warm-up j uses sample j % reps. Without --ids, sample i is
the i-th draw of torch.randint(0, vocab, (1, T)) from a generator seeded --seed + T, so sample 0
is bench_lxt.py's sequence. Use --ids when the other side must see the same tokens.

Output: per (T, target) the seconds per sample, the median, and the process's peak RSS
(getrusage ru_maxrss, KiB on Linux, reported in GiB). ru_maxrss is the peak over the whole
process, loading included, so a record's peak covers every earlier (T, target) too: for a clean
per-length peak run one --seq-len per process. With --json each (T, target) prints one JSON
object on one stdout line (progress goes to stderr); without it, bench_lxt.py-style lines.

Warm-up: default --warmup 0. A warm-up is one whole attribution, and at 8B on 2 threads that is
minutes (and the memory it touches is the same as a timed run's), while the one-off costs it
would remove (first touch of the weight pages, allocator growth) are small against one run at
that scale. With --reps > 1 the first entry of `seconds` still carries them; the median does not.

Out of memory: a RuntimeError/MemoryError about an allocation while loading, in the forward, the
backward or the relevance products is caught; the record for that (T, target) gets status "oom",
its stage (load | forward | backward | relevance), the error and the peak RSS so far, it is
printed and the script exits 0 without running the remaining (T, target) pairs (status "ok"
otherwise). The Linux OOM killer may instead kill the process outright (SIGKILL, no record): run
it under `/usr/bin/time -v` (its "Maximum resident set size" is then the peak) and treat exit
status 137 (or "Command terminated by signal 9") as OOM.

Usage: /tmp/venv/bin/python scripts/bench_lxt_scale.py --model DIR [--seq-len 128 512 ...]
       [--target last next-token] [--reps 1] [--warmup 0] [--threads 2] [--dtype float32]
       [--ids FILE | --seed 0] [--accumulate none|abs|signed] [--all-params-grad] [--json]
  e.g. /usr/bin/time -v /tmp/venv/bin/python scripts/bench_lxt_scale.py \\
         --model /models/llama-3.2-1b --seq-len 2048 --target next-token --ids ids.json --json
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch

STAGES = ("load", "forward", "backward", "relevance")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF Llama checkpoint directory (config.json + safetensors)")
    ap.add_argument("--seq-len", type=int, nargs="+", default=[128], metavar="T")
    ap.add_argument("--target", nargs="+", default=["next-token"], choices=["last", "next-token"])
    ap.add_argument("--reps", type=int, default=1, help="timed runs (samples) per (T, target)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="untimed runs before them (default 0: at 8B one costs minutes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="compute dtype the weights are loaded in (the reference protocol: float32)")
    ap.add_argument("--ids", metavar="FILE", help="token ids: JSON list of lists, or JSONL lists / {\"ids\": [...]}")
    ap.add_argument("--seed", type=int, default=0, help="random ids (without --ids): generator seed + T")
    ap.add_argument("--accumulate", default="none", choices=["none", "abs", "signed"],
                    help="none: W*grad as fresh tensors per run (bench_lxt.py); abs/signed: added to "
                         "an f32 running sum per weight (sparc3 attribute's aggregation)")
    ap.add_argument("--all-params-grad", action="store_true",
                    help="keep requires_grad on every parameter (embedding/lm_head, norms) too; "
                         "default: only the decoder Linear weights (+ inputs_embeds) need grad")
    ap.add_argument("--json", action="store_true", help="one JSON object per (T, target) on stdout")
    args = ap.parse_args()
    if args.reps < 1 or args.warmup < 0 or min(args.seq_len) < 2:
        ap.error("--reps must be >= 1, --warmup >= 0, every --seq-len >= 2")
    return args


def gib_from_kib(kib):
    return round(kib / 2**20, 4)


def peak_rss_gib():
    return gib_from_kib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def current_rss_gib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return gib_from_kib(int(line.split()[1]))
    except OSError:
        pass
    return None


def is_oom(e):
    if isinstance(e, MemoryError):
        return True
    if isinstance(e, RuntimeError):
        msg = str(e).lower()
        return any(s in msg for s in ("alloc", "out of memory", "not enough memory"))
    return False


def read_ids(path):
    """A JSON list of id lists, or JSONL: one id list or one {"ids": [...]} record per line."""
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) and data and isinstance(data[0], list) else None
    except json.JSONDecodeError:
        rows = None
    if rows is None:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if isinstance(rec, dict):
                rec = rec.get("ids")
            if not isinstance(rec, list):
                sys.exit(f"{path}:{n}: expected a list of ids or a record with \"ids\"")
            rows.append(rec)
    if not rows or not all(isinstance(r, list) and all(isinstance(i, int) for i in r) for r in rows):
        sys.exit(f"{path}: expected a non-empty list of token-id lists")
    return rows


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def versions():
    import importlib.metadata as md
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("transformers", "lxt"):
        try:
            out[pkg] = md.version(pkg)
        except Exception:
            out[pkg] = None
    return out


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model_dir = os.path.abspath(args.model)

    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    cfg = AutoConfig.from_pretrained(model_dir)
    if cfg.model_type != "llama":
        sys.exit(f"{model_dir}: model_type {cfg.model_type!r}; this benchmark patches modeling_llama only")
    vocab = cfg.vocab_size
    heads = cfg.num_attention_heads
    base = {
        "model": model_dir,
        "hidden": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "heads": heads,
        "kv_heads": getattr(cfg, "num_key_value_heads", None) or heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        "intermediate": cfg.intermediate_size,
        "vocab": vocab,
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "disk_dtype": str(getattr(cfg, "torch_dtype", None)).replace("torch.", ""),
        "params": None,
        "linear_weights": None,
        "linear_weight_params": None,
        "dtype": args.dtype,
        "attn": "eager",
        "threads": args.threads,
        "grad_on": "all-params" if args.all_params_grad else "linear-weights",
        "accumulate": args.accumulate,
        "warmup": args.warmup,
        "reps": args.reps,
        "ids_source": f"file:{os.path.abspath(args.ids)}" if args.ids else f"random:seed={args.seed}+T",
        "load_seconds": None,
        "rss_after_load_gib": None,
        **versions(),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
    }

    # Samples, checked before the (possibly long) load.
    if args.ids:
        rows = read_ids(args.ids)
        if len(rows) < args.reps:
            sys.exit(f"{args.ids}: {len(rows)} samples, --reps {args.reps} needs that many")
        short = [i for i, r in enumerate(rows[:args.reps]) if len(r) < max(args.seq_len)]
        if short:
            sys.exit(f"{args.ids}: sample {short[0]} has {len(rows[short[0]])} ids < T = {max(args.seq_len)}")
        bad = [i for r in rows[:args.reps] for i in r[:max(args.seq_len)] if not 0 <= i < vocab]
        if bad:
            sys.exit(f"{args.ids}: id {bad[0]} outside [0, {vocab})")

    def samples_for(T):
        if args.ids:
            return [torch.tensor([r[:T]], dtype=torch.long) for r in rows[:args.reps]]
        g = torch.Generator().manual_seed(args.seed + T)
        return [torch.randint(0, vocab, (1, T), generator=g) for _ in range(args.reps)]

    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else \
        (lambda *a: print(*a, flush=True))

    def emit(rec):
        if args.json:
            print(json.dumps(rec), flush=True)
        elif rec["status"] == "ok":
            secs = rec["seconds"]
            c = rec["check"]
            print(f"lxt {rec['target']} {rec['seq_len']}: median {rec['median_seconds']:.3f} s "
                  f"(min {min(secs):.3f} s), peak RSS {rec['peak_rss_gib']:.2f} GiB", flush=True)
            print(f"#   runs {' '.join(f'{t:.3f}' for t in secs)}; start {c['start']:.4f}, "
                  f"input-rel sum {c['input_rel_sum']:.4f}, weight-rel sum {c['weight_rel_sum']:.4f}, "
                  f"|weight-rel| sum {c['weight_rel_l1']:.4f}, nonzero {c['weight_rel_nonzero_frac']:.4f}, "
                  f"finite {c['finite']}", flush=True)
        else:
            print(f"lxt {rec['target']} {rec['seq_len']}: OOM in {rec['stage']} "
                  f"(peak RSS {rec['peak_rss_gib']:.2f} GiB): {rec['error']}", flush=True)

    def oom_record(T, target, stage, e, seconds=()):
        return {**base, "seq_len": T, "target": target, "seconds": list(seconds),
                "median_seconds": None, "peak_rss_gib": peak_rss_gib(),
                "rss_now_gib": current_rss_gib(), "status": "oom", "stage": stage,
                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                "check": None}

    # Per LXT's README: patch the HF modeling module BEFORE instantiating the model.
    from lxt.efficient import monkey_patch
    monkey_patch(modeling_llama, verbose=False)

    t0 = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, attn_implementation="eager")
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e):
            raise
        emit(oom_record(args.seq_len[0], args.target[0], "load", e))
        return 0
    model.eval()
    base["load_seconds"] = round(time.perf_counter() - t0, 3)
    base["rss_after_load_gib"] = current_rss_gib()
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()

    linears = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    expect = 7 * cfg.num_hidden_layers
    assert len(linears) == expect, f"expected {expect} decoder Linear layers, found {len(linears)}"
    lin_weights = [m.weight for m in linears]
    if not args.all_params_grad:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in lin_weights:
            w.requires_grad_(True)
    emb = model.get_input_embeddings()
    base["params"] = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    base["linear_weights"] = len(lin_weights)
    base["linear_weight_params"] = sum(w.numel() for w in lin_weights)

    log(f"# lxt {base['lxt']} torch {base['torch']} transformers {base['transformers']} "
        f"threads={torch.get_num_threads()} attn={model.config._attn_implementation} dtype={args.dtype} "
        f"load {base['load_seconds']:.1f} s, RSS after load {base['rss_after_load_gib']} GiB; "
        f"{base['params']:,} params, grad on {base['grad_on']} ({len(lin_weights)} Linear weights, "
        f"{base['linear_weight_params']:,}), accumulate {args.accumulate}")

    stage = ["forward"]  # current stage of the run in progress, for the OOM record

    # Running sums (--accumulate abs|signed), allocated once outside the timing, as sparc3 does.
    acc = None

    def attribute(ids, target):
        """One attribution; returns (start value, inputs_embeds, relevance products or None)."""
        stage[0] = "forward"
        x = emb(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=x, use_cache=False).logits  # (1, T, V)
        if target == "last":
            y = logits[0, -1, :].max()
        else:  # next-token: sum_{t<T-1} logits[t, ids[t+1]]
            y = logits[0, :-1, :].gather(-1, ids[0, 1:, None]).sum()
        del logits
        stage[0] = "backward"
        y.backward()
        stage[0] = "relevance"
        with torch.no_grad():
            if acc is None:
                rel = [w * w.grad for w in lin_weights]
            else:
                rel = None
                for w, a in zip(lin_weights, acc):
                    if args.accumulate == "signed":
                        a.addcmul_(w, w.grad)
                    else:
                        r = w * w.grad
                        a.add_(r.abs_())
                        del r
        return y.detach(), x, rel

    def zero_grads():
        for p in model.parameters():
            p.grad = None

    for T in args.seq_len:
        if T > getattr(cfg, "max_position_embeddings", T):
            log(f"# warning: T = {T} > max_position_embeddings {cfg.max_position_embeddings}")
        samples = samples_for(T)
        for target in args.target:
            times = []
            y = x = rel = None
            try:
                if args.accumulate != "none":
                    stage[0] = "relevance"
                    acc = None
                    acc = [torch.zeros(w.shape, dtype=torch.float32) for w in lin_weights]
                for i in range(args.warmup + args.reps):
                    ids = samples[(i - args.warmup) if i >= args.warmup else i % args.reps]
                    zero_grads()
                    y = x = rel = None  # free the previous run's products outside the timing
                    t0 = time.perf_counter()
                    y, x, rel = attribute(ids, target)
                    dt = time.perf_counter() - t0
                    if i >= args.warmup:
                        times.append(dt)
                    log(f"#   {target} T={T} {'run' if i >= args.warmup else 'warm-up'} {i}: {dt:.3f} s")
            except (RuntimeError, MemoryError) as e:
                if not is_oom(e):
                    raise
                failed = stage[0]
                y = x = rel = None
                acc = None
                zero_grads()
                emit(oom_record(T, target, failed, e, times))
                return 0
            peak = peak_rss_gib()  # before the checks below, which allocate a little

            # Sanity (outside timing): start value vs input relevance, weight relevance finite, nonzero.
            with torch.no_grad():
                tensors = rel if rel is not None else acc
                in_rel = (x * x.grad).sum().item()
                w_sum = sum(r.sum().item() for r in tensors)
                w_l1 = sum(torch.linalg.vector_norm(r, 1).item() for r in tensors)
                nonzero = sum(torch.count_nonzero(r).item() for r in tensors) / base["linear_weight_params"]
                finite = bool(all(torch.isfinite(torch.linalg.vector_norm(r, 1)).item() for r in tensors)
                              and torch.isfinite(torch.tensor(w_sum)).item())
            rec = {**base, "seq_len": T, "target": target, "seconds": [round(t, 4) for t in times],
                   "median_seconds": round(statistics.median(times), 4), "peak_rss_gib": peak,
                   "rss_now_gib": current_rss_gib(), "status": "ok", "stage": None, "error": None,
                   "check": {"start": y.item(), "input_rel_sum": in_rel,
                             "weight_rel_sum": w_sum, "weight_rel_l1": w_l1,
                             "weight_rel_nonzero_frac": nonzero, "finite": finite,
                             "of": "last run" if rel is not None else f"sum over {args.warmup + args.reps} runs"}}
            emit(rec)
            del y, x, rel, tensors
            acc = None
    zero_grads()
    return 0


if __name__ == "__main__":
    sys.exit(main())
