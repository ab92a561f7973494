#!/usr/bin/env python3
"""Offline cross-check of sparc3 output against Hugging Face transformers.

sparc3 itself never depends on Python. This script is a developer-side check
that the model directories written by `sparc3 compress` load *unchanged* in
transformers and compute the same thing as sparc3.

Environment (a throwaway venv; only PyPI is needed; ~3 min on the 2-core box):

    python3 -m venv /tmp/hfvenv
    /tmp/hfvenv/bin/pip install torch==2.6.0 transformers==4.52.4 \
        tokenizers==0.21.4 safetensors numpy
    /tmp/hfvenv/bin/pip install sentencepiece protobuf   # AutoTokenizer on sentencepiece
                                                         # dirs (tiny-random-llama, stories260k)
    /tmp/hfvenv/bin/pip install gguf==0.19.0 accelerate torch==2.6.0   # only for .gguf inputs

(The PyPI torch wheel is the CUDA build and pulls ~2.5 GB of nvidia-* wheels;
it runs fine on CPU.)

Usage:

    /tmp/hfvenv/bin/python scripts/check_hf_load.py [options] PATH [PATH ...]

Each PATH is either a model directory (a sparc3 output, or any HF directory,
e.g. a dense reference model) or a `.gguf` file (loaded by transformers with
`gguf_file=`; tokenized with the `tokenizer.json` beside it, as sparc3 does).

What is checked for every PATH (any failure makes the exit status 1):

 1. Loading: `AutoModelForCausalLM.from_pretrained(..., output_loading_info=True)`
    (float32, eager attention) reports no missing / unexpected / mismatched
    keys and no error messages; transformers' log warnings during loading are
    captured and printed (warnings about uninitialised or unused weights are
    failures). The stored dtype matches `config.json`'s `torch_dtype`.
 2. Tokenizer: `AutoTokenizer.from_pretrained` loads, and on the evaluation
    text gives exactly the ids of the `tokenizers` library on the directory's
    `tokenizer.json` (no special tokens).
 3. Sparsity (directories with `sparc3-report.json`): the fraction of exact
    zeros in the decoder-layer `nn.Linear` weights is within --sparsity-tol of
    the requested ratio and equals the report's per-layer figures.
 4. Weights against the original model (the report's `model`, or --orig):
    every tensor outside the pruned linears is unchanged (after rounding the
    original to the output dtype), every kept linear weight equals the
    original, and, for `--method magnitude`, every removed weight has a
    magnitude no larger than every kept weight of its group (layer/row/global
    scope). For row-scoped methods (lrp, gradient, wanda) every row of a layer
    loses the same number of weights. (LRP/Wanda scores themselves depend on
    sparc3's calibration sampling and are not recomputed here.)
 5. Perplexity: `sparc3 eval --model PATH --text TEXT --seq-len L
    --max-windows N --json` against the same protocol in PyTorch (tokenize the
    whole text without special tokens, non-overlapping windows of L tokens from
    token 0, the first N windows, mean NLL over the L-1 predicted tokens of
    each window, ppl = exp(mean NLL)). Token count, available windows, every
    per-window NLL and the ppl must agree to --rtol (relative).
 6. Compress-time perplexities: when the report's eval text is available
    (same sha256), the report's `ppl_after` is recomputed on the output and
    `ppl_before` on the original model.

Optional, `--golden NAME [NAME ...]` (names of shared/golden/*.safetensors,
e.g. tiny-random-llama demo-opt): runs `sparc3 attribute --aggregation signed`
on shared/models/NAME with the golden `input_ids` (2 x 16, as JSONL ids
records) for the `next_token` and `last` starts (AttnLRP) and for `last` with
`--rule grad`, and compares every weight's relevance with the golden LXT 2.1
values (sparc3 averages over the 2 samples, the golden sums them: factor 2).
Tensors whose golden relevance is negligible (norm < 1e-6 of the largest, e.g.
k_proj.bias, which is exactly 0 in exact arithmetic because softmax is
shift-invariant) are skipped; the others must agree to a relative L2 error of
--golden-rtol (default 1e-4).

Example:

    S=target/release/sparc3
    $S compress --method magnitude --ratio 0.5 --out /tmp/hfcheck/demo-mag --force
    /tmp/hfvenv/bin/python scripts/check_hf_load.py --sparc3 $S /tmp/hfcheck/demo-mag \
        shared/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import argparse
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
import warnings

DEFAULT_SHARED = "/work/shared"
HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF de-quantization progress bar

try:
    import numpy as np  # noqa: F401  (transformers needs it anyway)
    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer
except ImportError as e:  # pragma: no cover
    sys.exit(f"missing Python package ({e}); create the venv described at the top of {__file__}")


# --------------------------------------------------------------------------- helpers

class Result:
    def __init__(self, name):
        self.name = name
        self.failures = []
        self.notes = []

    def fail(self, msg):
        self.failures.append(msg)
        print(f"  FAIL  {msg}", flush=True)

    def ok(self, msg):
        self.notes.append(msg)
        print(f"  ok    {msg}", flush=True)

    def info(self, msg):
        self.notes.append(msg)
        print(f"  info  {msg}", flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_text(path):
    """Plain text, or JSONL with a "text" field (records joined by blank lines), like sparc3."""
    with open(path, encoding="utf-8") as f:
        data = f.read()
    if path.endswith(".jsonl"):
        recs = [json.loads(line) for line in data.splitlines() if line.strip()]
        if recs and all(isinstance(r, dict) and "text" in r for r in recs):
            return "\n\n".join(r["text"] for r in recs)
    return data


class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")


def load_model(path, gguf_file=None):
    """from_pretrained with loading info, float32, eager attention; returns (model, info, log lines)."""
    cap = LogCapture()
    tlog = logging.getLogger("transformers")
    tlog.addHandler(cap)
    transformers.logging.set_verbosity_warning()
    kwargs = dict(torch_dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model, info = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        finally:
            tlog.removeHandler(cap)
    lines = cap.records + [f"{w.category.__name__}: {w.message}" for w in caught]
    model.eval()
    return model, info, lines


def stored_dtypes(d):
    from safetensors import safe_open
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    dtypes = {}
    for fn in files:
        with safe_open(os.path.join(d, fn), framework="pt") as f:
            for k in f.keys():
                dtypes[k] = f.get_slice(k).get_dtype()
    return dtypes


def decoder_linears(model):
    """{HF weight name: weight} of every nn.Linear inside the decoder layers."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in f".{name}":
            out[f"{name}.weight"] = mod.weight.detach()
    return out


@torch.no_grad()
def torch_ppl(model, ids, seq_len, max_windows):
    n_avail = len(ids) // seq_len
    n = n_avail if max_windows is None else min(n_avail, max_windows)
    per = []
    for w in range(n):
        x = torch.tensor(ids[w * seq_len:(w + 1) * seq_len], dtype=torch.long)[None]
        logits = model(input_ids=x, use_cache=False).logits[0].float()
        nll = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum")
        per.append(float(nll) / (seq_len - 1))
    mean = sum(per) / len(per) if per else float("nan")
    return dict(tokens=len(ids), available_windows=n_avail, windows=n,
                per_window_nll=per, mean_nll=mean, ppl=math.exp(mean))


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def run_sparc3_eval(sparc3, model_path, text, seq_len, max_windows, threads):
    cmd = [sparc3, "eval", "--model", model_path, "--text", text, "--seq-len", str(seq_len),
           "--max-windows", str(max_windows), "--json"]
    if threads:
        cmd += ["--threads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout)


def compare_ppl(res, label, sp, py, rtol):
    ok = True
    for k in ("tokens", "available_windows"):
        if k in sp and sp[k] != py[k]:
            res.fail(f"{label}: {k} sparc3={sp[k]} python={py[k]}")
            ok = False
    spw = sp.get("per_window_nll", [])
    if len(spw) != len(py["per_window_nll"]):
        res.fail(f"{label}: windows sparc3={len(spw)} python={len(py['per_window_nll'])}")
        return
    worst = max((rel(a, b) for a, b in zip(spw, py["per_window_nll"])), default=0.0)
    r = rel(sp["ppl"], py["ppl"])
    msg = (f"{label}: ppl sparc3={sp['ppl']:.6f} transformers={py['ppl']:.6f} rel.diff={r:.2e}; "
           f"mean NLL {sp['mean_nll']:.6f} vs {py['mean_nll']:.6f}; worst per-window NLL rel.diff={worst:.2e} "
           f"({len(spw)} windows, {py['tokens']} tokens)")
    if r > rtol or worst > rtol:
        res.fail(msg)
    elif ok:
        res.ok(msg)


# --------------------------------------------------------------------------- checks

def check_loading(res, info, log_lines):
    bad = {k: v for k, v in info.items() if v}
    res.info(f"loading info: " + ", ".join(f"{k}={list(v)}" for k, v in info.items()))
    if bad:
        res.fail(f"loading info not empty: {bad}")
    else:
        res.ok("no missing/unexpected/mismatched keys, no error messages")
    if log_lines:
        for line in log_lines:
            res.info(f"load log: {line[:400]}")
        serious = [l for l in log_lines if any(s in l for s in (
            "newly initialized", "were not used", "not initialized", "missing", "unexpected", "mismatch"))]
        if serious:
            res.fail(f"loading warnings about weights: {serious}")
    else:
        res.ok("no warnings logged while loading")


def check_tokenizer(res, tok_source, tok_kwargs, tokjson, text):
    """AutoTokenizer must load and agree with the tokenizers library on tokenizer.json."""
    t0 = time.time()
    ref = Tokenizer.from_file(tokjson).encode(text, add_special_tokens=False).ids
    try:
        cap = LogCapture()
        logging.getLogger("transformers").addHandler(cap)
        try:
            at = AutoTokenizer.from_pretrained(tok_source, **tok_kwargs)
        finally:
            logging.getLogger("transformers").removeHandler(cap)
    except Exception as e:  # noqa: BLE001
        res.fail(f"AutoTokenizer.from_pretrained failed: {type(e).__name__}: {e}")
        return ref
    for line in cap.records:
        res.info(f"tokenizer log: {line[:300]}")
    ids = at(text, add_special_tokens=False, verbose=False)["input_ids"]
    if ids == ref:
        res.ok(f"AutoTokenizer ({type(at).__name__}) == tokenizers(tokenizer.json): {len(ids)} tokens "
               f"({time.time() - t0:.1f} s)")
    else:
        first = next((i for i, (a, b) in enumerate(zip(ids, ref)) if a != b), min(len(ids), len(ref)))
        res.fail(f"AutoTokenizer ({type(at).__name__}) gives {len(ids)} tokens, tokenizer.json {len(ref)}; "
                 f"first difference at token {first}: {ids[first:first + 5]} vs {ref[first:first + 5]}")
    return ref


def check_sparsity(res, lin, report, expect, tol):
    zeros = total = 0
    per = {}
    for k, w in lin.items():
        z = int((w == 0).sum())
        per[k[:-len(".weight")]] = z / w.numel()
        zeros += z
        total += w.numel()
    frac = zeros / total
    vals = sorted(per.values())
    res.info(f"decoder linears: {len(per)} layers, {total} weights, zero fraction {frac:.6f} "
             f"(per layer min {vals[0]:.4f} max {vals[-1]:.4f})")
    if expect is not None:
        if abs(frac - expect) <= tol:
            res.ok(f"zero fraction {frac:.4f} ~ expected {expect} (tol {tol})")
        else:
            res.fail(f"zero fraction {frac:.4f} not within {tol} of expected {expect}")
    if report:
        rep = report.get("sparsity_all_linears")
        if rep is not None and abs(rep - frac) > 1e-9:
            res.fail(f"report sparsity_all_linears={rep} but counted {frac}")
        bad = []
        for e in report.get("sparsity_per_layer", []):
            got = per.get(e["layer"])
            if got is None or abs(got - e["sparsity"]) > 1e-9:
                bad.append((e["layer"], e["sparsity"], got))
        if bad:
            res.fail(f"per-layer sparsity differs from the report: {bad[:5]} ({len(bad)} layers)")
        elif report.get("sparsity_per_layer"):
            res.ok(f"per-layer zero fractions equal the report's ({len(report['sparsity_per_layer'])} layers)")
    return frac


def check_against_original(res, model, orig, report, out_dtype):
    """Kept weights unchanged; removed ones are consistent with the method."""
    sd, osd = model.state_dict(), orig.state_dict()
    lin = set(decoder_linears(model))
    method = (report or {}).get("method")
    scope = (report or {}).get("scope")
    changed, kept_bad, sel_bad, row_bad, n_checked = [], [], [], [], 0
    for k, v in sd.items():
        if k not in osd:
            continue
        o = osd[k].to(out_dtype).float() if out_dtype is not None else osd[k]
        if v.shape != o.shape:
            changed.append(f"{k} shape {tuple(v.shape)} vs {tuple(o.shape)}")
            continue
        n_checked += 1
        if k not in lin:
            if not torch.equal(v, o):
                changed.append(f"{k} max|diff|={float((v - o).abs().max()):.3g}")
            continue
        removed = v == 0
        kept = ~removed
        if not torch.equal(v[kept], o[kept]):
            kept_bad.append(f"{k} max|diff|={float((v[kept] - o[kept]).abs().max()):.3g}")
        a = osd[k].abs().float()  # selection was made on the original precision
        if method == "magnitude" and removed.any() and kept.any():
            if scope == "row":
                rmax = torch.where(removed, a, torch.full_like(a, -1)).max(1).values
                kmin = torch.where(kept, a, torch.full_like(a, float("inf"))).min(1).values
                viol = int((rmax > kmin).sum())
            else:  # layer (global is checked across layers below)
                viol = int(a[removed].max() > a[kept].min())
            if viol:
                sel_bad.append(f"{k}: {viol} group(s) with a removed |W| above a kept |W|")
        if scope == "row":
            per_row = removed.sum(1)
            # Weights that were already exactly zero may count as removed; allow that.
            if int(per_row.max() - per_row.min()) > int((osd[k] == 0).sum()):
                row_bad.append(f"{k}: removed per row {int(per_row.min())}..{int(per_row.max())}")
    if method == "magnitude" and scope == "global":
        rem = torch.cat([osd[k].abs().float()[sd[k] == 0] for k in lin])
        kep = torch.cat([osd[k].abs().float()[sd[k] != 0] for k in lin])
        if rem.numel() and kep.numel() and rem.max() > kep.min():
            sel_bad.append("global scope: a removed |W| above a kept |W|")
    if changed:
        res.fail(f"tensors outside the pruned linears changed: {changed[:6]}")
    else:
        res.ok(f"all {n_checked} shared tensors: non-pruned tensors identical to the original"
               + (f" (rounded to {out_dtype})" if out_dtype is not None else ""))
    if kept_bad:
        res.fail(f"kept linear weights differ from the original: {kept_bad[:6]}")
    else:
        res.ok(f"kept weights of all {len(lin)} pruned linears equal the original")
    if method == "magnitude":
        if sel_bad:
            res.fail(f"magnitude selection inconsistent: {sel_bad[:6]}")
        else:
            res.ok(f"magnitude selection: every removed |W| <= every kept |W| of its {scope} group")
    if scope == "row":
        if row_bad:
            res.fail(f"row scope but uneven removal: {row_bad[:6]}")
        else:
            res.ok("row scope: every row of every layer lost the same number of weights")


def check_golden(name, args):
    """sparc3 attribute on the golden inputs vs the golden LXT relevance."""
    import tempfile
    from safetensors.torch import load_file
    res = Result(f"golden relevance {name}")
    print(f"\n=== golden relevance: {name}", flush=True)
    g = load_file(os.path.join(args.shared, "golden", f"{name}.safetensors"))
    ids = g["input_ids"].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "ids.jsonl")
        with open(data, "w") as f:
            for row in ids:
                f.write(json.dumps({"ids": row}) + "\n")
        for target, rule, prefix in (("next-token", "lrp", "next_token"), ("last", "lrp", "last"),
                                     ("last", "grad", "grad")):
            out = os.path.join(tmp, f"{prefix}.safetensors")
            cmd = [args.sparc3, "attribute", "--model", os.path.join(args.shared, "models", name),
                   "--data", data, "--samples", str(len(ids)), "--seq-len", str(len(ids[0])),
                   "--target", target, "--rule", rule, "--aggregation", "signed", "--out", out, "--force"]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                res.fail(f"{prefix}: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-1000:]}")
                continue
            r = load_file(out)
            keys = [k for k in g if k.startswith(prefix + ".") and k.endswith((".weight", ".bias"))]
            missing = [k for k in keys if k[len(prefix) + 1:] not in r]
            if missing:
                res.fail(f"{prefix}: sparc3 has no relevance for {missing[:5]} ({len(missing)} tensors)")
            keys = [k for k in keys if k not in missing]
            if not keys:
                continue
            big = max(float(g[k].double().norm()) for k in keys)
            worst, worst_k, skipped = 0.0, None, []
            for k in keys:
                b = g[k].double()
                a = r[k[len(prefix) + 1:]].double() * len(ids)
                if float(b.norm()) < 1e-6 * big:
                    skipped.append(k[len(prefix) + 1:].split("layers.")[-1])
                    continue
                e = float((a - b).norm() / b.norm())
                if e > worst:
                    worst, worst_k = e, k
            msg = (f"{prefix} ({rule}): {len(keys) - len(skipped)} tensors, worst relative L2 error "
                   f"{worst:.2e} ({worst_k})" + (f"; skipped negligible {skipped}" if skipped else ""))
            (res.fail if worst > args.golden_rtol else res.ok)(msg)
    return res


# --------------------------------------------------------------------------- main

def resolve_original(report, args):
    if args.orig:
        return args.orig
    if not report:
        return None
    m = report.get("model", {})
    if m.get("kind") == "builtin" and m.get("name") == "demo-llama":
        p = os.path.join(args.shared, "models", "demo-llama")
        return p if os.path.isdir(p) else None
    p = m.get("path")
    return p if p and os.path.exists(p) else None


def load_any(path):
    """A directory or a .gguf file -> (model, info, log lines)."""
    if path.endswith(".gguf"):
        return load_model(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
    return load_model(path)


def resolve_report_text(ev, args):
    f = ev.get("file")
    if not f:
        return None
    cands = [f] if not f.startswith("builtin:") else []
    cands += [args.text, os.path.join(args.shared, "data", "demo-corpus", "valid.txt")]
    for c in cands:
        if c and os.path.isfile(c) and sha256_file(c) == ev.get("sha256"):
            return c
    return None


def check_path(path, args):
    res = Result(path)
    print(f"\n=== {path}", flush=True)
    is_gguf = path.endswith(".gguf")
    d = os.path.dirname(os.path.abspath(path)) if is_gguf else path
    report_path = os.path.join(d, "sparc3-report.json")
    report = json.load(open(report_path)) if (not is_gguf and os.path.exists(report_path)) else None
    if report:
        res.info(f"sparc3 report: method={report.get('method')} scope={report.get('scope')} "
                 f"ratio={report.get('ratio_requested')} model={report.get('model')}")

    # 1. model loading
    t0 = time.time()
    try:
        model, info, log_lines = load_any(path)
    except Exception as e:  # noqa: BLE001
        res.fail(f"from_pretrained failed: {type(e).__name__}: {e}")
        return res
    res.info(f"loaded {type(model).__name__} in {time.time() - t0:.1f} s")
    check_loading(res, info, log_lines)
    out_dtype = None
    if not is_gguf:
        dts = stored_dtypes(d)
        kinds = sorted(set(dts.values()))
        cfg_dtype = json.load(open(os.path.join(d, "config.json"))).get("torch_dtype")
        res.info(f"stored dtypes {kinds}, config torch_dtype={cfg_dtype}")
        want = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}.get(cfg_dtype)
        if want and kinds != [want]:
            res.fail(f"config says {cfg_dtype} but tensors are stored as {kinds}")
        if kinds == ["BF16"]:
            out_dtype = torch.bfloat16
        elif kinds == ["F16"]:
            out_dtype = torch.float16
    if getattr(model.config, "tie_word_embeddings", False):
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        if emb.data_ptr() == head.data_ptr():
            res.ok("lm_head tied to the input embedding")
        else:
            res.fail("tie_word_embeddings is true but lm_head is not tied")

    # 2. tokenizer
    text = read_text(args.text)
    tokjson = args.tokenizer or os.path.join(d, "tokenizer.json")
    if is_gguf and not args.tokenizer and os.path.exists(tokjson):
        # sparc3 tokenizes a GGUF with the tokenizer.json beside it; transformers'
        # own GGUF tokenizer conversion is reported for information only.
        ids = Tokenizer.from_file(tokjson).encode(text, add_special_tokens=False).ids
        try:
            gt = AutoTokenizer.from_pretrained(d, gguf_file=os.path.basename(path))
            gids = gt(text, add_special_tokens=False, verbose=False)["input_ids"]
            res.info(f"transformers' GGUF tokenizer: {len(gids)} tokens; tokenizer.json: {len(ids)} tokens"
                     + ("" if gids == ids else " (differ; tokenizer.json is used, as sparc3 does)"))
        except Exception as e:  # noqa: BLE001
            res.info(f"transformers' GGUF tokenizer conversion failed: {type(e).__name__}: {e}")
        try:
            AutoTokenizer.from_pretrained(d)
            res.ok("AutoTokenizer loads the directory beside the GGUF")
        except Exception as e:  # noqa: BLE001
            res.info(f"AutoTokenizer on the directory beside the GGUF failed: {e}")
    else:
        ids = check_tokenizer(res, d, {}, tokjson, text)

    # 3. sparsity
    lin = decoder_linears(model)
    expect = args.expect_sparsity
    if expect is None and report:
        expect = report.get("ratio_requested")
    frac = check_sparsity(res, lin, report, expect, args.sparsity_tol)

    # 4. against the original
    orig = None
    orig_path = resolve_original(report, args) if not is_gguf else None
    if orig_path:
        try:
            orig, oinfo, _ = load_any(orig_path)
            res.info(f"original: {orig_path}")
            check_against_original(res, model, orig, report, out_dtype)
        except Exception as e:  # noqa: BLE001
            res.fail(f"could not check against original {orig_path}: {type(e).__name__}: {e}")
    elif report:
        res.info("original model not available: weight-level checks skipped")

    # 5. perplexity, sparc3 vs transformers
    torch.set_num_threads(args.threads or 2)
    try:
        t0 = time.time()
        sp = run_sparc3_eval(args.sparc3, path, args.text, args.seq_len, args.max_windows, args.threads)
        t_sp = time.time() - t0
        t0 = time.time()
        py = torch_ppl(model, ids, args.seq_len, args.max_windows)
        res.info(f"sparc3 eval {t_sp:.1f} s (incl. load), transformers forward {time.time() - t0:.1f} s")
        compare_ppl(res, f"{os.path.basename(args.text)} L={args.seq_len} N={args.max_windows}",
                    sp, py, args.rtol)
    except Exception as e:  # noqa: BLE001
        res.fail(f"perplexity comparison failed: {type(e).__name__}: {e}")

    # 6. compress-time perplexities from the report
    ev = (report or {}).get("eval")
    if ev and not args.skip_report_ppl:
        tf = resolve_report_text(ev, args)
        if not tf:
            res.info(f"report eval text {ev.get('file')} not found: ppl_before/after not rechecked")
        else:
            rtext = read_text(tf)
            rids = Tokenizer.from_file(tokjson).encode(rtext, add_special_tokens=False).ids
            for label, m, key in (("ppl_after (output)", model, "ppl_after"),
                                  ("ppl_before (original)", orig, "ppl_before")):
                if m is None or report.get(key) is None:
                    continue
                py = torch_ppl(m, rids, ev["seq_len"], ev["windows"])
                r = rel(report[key], py["ppl"])
                msg = (f"report {label}: sparc3={report[key]:.6f} transformers={py['ppl']:.6f} "
                       f"rel.diff={r:.2e} ({ev['windows']} windows of {ev['seq_len']} on {os.path.basename(tf)})")
                (res.fail if r > args.rtol else res.ok)(msg)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help="sparc3 output directories, HF directories or .gguf files")
    ap.add_argument("--sparc3", default=os.path.join(HERE, "..", "target", "release", "sparc3"))
    ap.add_argument("--shared", default=DEFAULT_SHARED, help="shared assets folder (default %(default)s)")
    ap.add_argument("--text", default=None, help="evaluation text (default: WikiText-2 test, joined)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-windows", type=int, default=4)
    ap.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance for ppl/NLL (default %(default)s)")
    ap.add_argument("--expect-sparsity", type=float, default=None,
                    help="expected zero fraction (default: the report's ratio_requested)")
    ap.add_argument("--sparsity-tol", type=float, default=0.01)
    ap.add_argument("--orig", default=None, help="original model (dir or .gguf) for every PATH "
                    "(default: the one named in sparc3-report.json)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json to use instead of the one beside the model")
    ap.add_argument("--threads", type=int, default=None, help="threads for torch and sparc3 (default 2 / all)")
    ap.add_argument("--golden", nargs="+", default=[], metavar="NAME",
                    help="also compare sparc3 attribute with shared/golden/NAME.safetensors")
    ap.add_argument("--golden-rtol", type=float, default=1e-4)
    ap.add_argument("--skip-report-ppl", action="store_true", help="do not recompute the report's ppl_before/after")
    args = ap.parse_args()
    if args.text is None:
        args.text = os.path.join(args.shared, "data", "wikitext-2-raw", "wiki.test.joined.txt")
    if not os.access(args.sparc3, os.X_OK):
        sys.exit(f"sparc3 binary not found at {args.sparc3} (use --sparc3)")
    transformers.utils.logging.disable_progress_bar()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, sparc3 {args.sparc3}")

    if not args.paths and not args.golden:
        ap.error("give at least one PATH or --golden NAME")
    results = [check_path(p, args) for p in args.paths]
    results += [check_golden(n, args) for n in args.golden]
    print("\n=== summary")
    for r in results:
        print(f"{'PASS' if not r.failures else 'FAIL'}  {r.name}" +
              ("" if not r.failures else f"  ({len(r.failures)} failure(s))"))
        for f in r.failures:
            print(f"      - {f}")
    sys.exit(1 if any(r.failures for r in results) else 0)


if __name__ == "__main__":
    main()
