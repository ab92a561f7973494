#!/usr/bin/env python
"""Attribution-speed benchmark: AttnLRP (LXT 2.1, efficient variant) on SmolLM2-135M (GGUF Q4_1 -> fp32).

Reproduces the reference protocol of /work/shared/README.md (models/smollm2-135m):
  one attribution = forward on inputs_embeds (requires_grad) + patched backward from the target
  + relevance R_W = W * dL/dW for all 210 decoder nn.Linear weights;
  batch 1, random ids (fixed seed), T in {128, 512}, torch threads 2, eager attention,
  median of 3 timed runs after 1 warm-up, grads zeroed (set to None) between runs.

Targets:
  last        argmax logit at the last position (the reference's target)
  next-token  sum over t < T-1 of logits[t, ids[t+1]]

  --plain     same measurement without the LXT patch (ordinary gradient), for reference.
              (LXT patches modeling_llama at module level, so plain must run in its own process.)

Usage: /tmp/hfvenv/bin/python /tmp/pt/lxt_bench.py [--plain] [--lengths 128 512]
       [--targets last next-token] [--reps 3] [--seed 0] [--all-params-grad]
"""
import argparse
import resource
import statistics
import sys
import time

import torch

MODEL_DIR = "/work/shared/models/smollm2-135m"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plain", action="store_true", help="no LXT patch: plain gradient x weight")
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--targets", nargs="+", default=["last", "next-token"], choices=["last", "next-token"])
    ap.add_argument("--reps", type=int, default=3, help="timed runs per (length, target), after 1 warm-up")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--all-params-grad", action="store_true",
                    help="keep requires_grad on every parameter (embedding/lm_head, norms) too; "
                         "default: only the 210 decoder Linear weights (+ inputs_embeds) need grad")
    return ap.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    if not args.plain:
        # Per LXT's README: patch the HF modeling module BEFORE instantiating the model.
        from lxt.efficient import monkey_patch
        monkey_patch(modeling_llama, verbose=False)
    mode = "plain" if args.plain else "lxt"

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        MODEL_DIR, gguf_file=GGUF_FILE, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    load_s = time.perf_counter() - t0

    linears = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 210, f"expected 210 decoder Linear layers, found {len(linears)}"
    lin_weights = [m.weight for m in linears]
    if not args.all_params_grad:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in lin_weights:
            w.requires_grad_(True)
    emb = model.get_input_embeddings()
    vocab = model.config.vocab_size

    import transformers, importlib.metadata as md
    try:
        lxt_ver = md.version("lxt")
    except Exception:
        lxt_ver = "n/a"
    print(f"# mode={mode} torch {torch.__version__} transformers {transformers.__version__} lxt {lxt_ver} "
          f"threads={torch.get_num_threads()} attn={model.config._attn_implementation} "
          f"load {load_s:.1f} s, grad on {'all params' if args.all_params_grad else '210 decoder Linear weights'}",
          flush=True)

    def attribute(ids, target):
        """One attribution; returns (start logit value, input-embedding relevance sum, relevance dict)."""
        x = emb(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=x, use_cache=False).logits  # (1, T, V)
        if target == "last":
            y = logits[0, -1, :].max()
        else:  # next-token: sum_{t<T-1} logits[t, ids[t+1]]
            y = logits[0, :-1, :].gather(-1, ids[0, 1:, None]).sum()
        y.backward()
        with torch.no_grad():
            rel = [w * w.grad for w in lin_weights]
        return y.detach(), x, rel

    def zero_grads():
        for p in model.parameters():
            p.grad = None

    for T in args.lengths:
        g = torch.Generator().manual_seed(args.seed + T)
        ids = torch.randint(0, vocab, (1, T), generator=g)
        for target in args.targets:
            times = []
            for i in range(args.warmup + args.reps):
                zero_grads()
                t0 = time.perf_counter()
                y, x, rel = attribute(ids, target)
                dt = time.perf_counter() - t0
                if i >= args.warmup:
                    times.append(dt)
            # sanity (outside timing): start value vs input relevance sum, weight relevance finite
            in_rel = (x * x.grad).sum().item()
            w_rel_sum = sum(r.sum().item() for r in rel)
            finite = all(torch.isfinite(r).all().item() for r in rel)
            print(f"{mode} {target} {T}: median {statistics.median(times):.3f} s (min {min(times):.3f} s)",
                  flush=True)
            print(f"#   runs {' '.join(f'{t:.3f}' for t in times)}; start {y.item():.4f}, "
                  f"input-rel sum {in_rel:.4f}, weight-rel sum {w_rel_sum:.4f}, finite {finite}",
                  flush=True)
            del x, rel
    zero_grads()

    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"peak RSS: {maxrss_kb / 1024:.0f} MiB", flush=True)


if __name__ == "__main__":
    sys.exit(main())
