#!/usr/bin/env python3
"""Where two Wanda N:M masks of SmolLM2 part: for each block up to --layers, replays the
reference's own path (scripts/wanda_reference.py, official variant) and classifies every group
of M inputs whose pruned entries differ between mask A and mask B: a tie among zero weights
(Q4_1 has exact zeros; pruning either zero gives the same model) or a true difference, with the
relative gap between the N-th and (N+1)-th smallest scores of the group.

  python scripts/wanda_nm_divergence.py A.safetensors B.safetensors [--layers 4]

Measured (sparc3 `compress --method wanda --pattern 2:4` against the reference's
`--prune-n 2 --prune-m 4`, exact windows): blocks 0-1 differ only in zero ties; block 2 has
one true difference, a rounding tie (scores 2.1e-8 apart) in o_proj; block 3 then has
differences at gaps of 4e-6..1.4e-4, block 4 up to 2e-3, and so on (2.2% of entries by
block 29). (A throwaway venv with torch and transformers; not used by sparc3 or CI.)
"""
import json, os, sys
import torch
from safetensors.torch import load_file

here = os.path.dirname(os.path.abspath(__file__))
shared = os.path.join(here, "../../shared/")
ma_f, mb_f = sys.argv[1], sys.argv[2]
last = int(sys.argv[sys.argv.index("--layers") + 1]) if "--layers" in sys.argv else 4
sys.argv = ["wanda_reference.py", "--no-eval", "--prune-n", "2", "--prune-m", "4",
            "--model-dir", shared + "models/smollm2-135m", "--calib", shared + "data/c4/calib-smollm2-128x512.jsonl"]
src = open(os.path.join(here, "wanda_reference.py")).read().replace("\nmain()\n", "\n")
exec(compile(src, "wanda_reference.py", "exec"))

A, B = load_file(ma_f), load_file(mb_f)
n_, m_ = args.prune_n, args.prune_m
model = load_model()
recs = [json.loads(l) for l in open(args.calib)][:128]
samples = torch.tensor([r["ids"][:512] for r in recs], dtype=torch.long)
inps, fw_kw = capture_inputs(model, samples, torch.float32)
outs = torch.zeros_like(inps)
with torch.no_grad():
    for i, layer in enumerate(model.model.layers[:last + 1]):
        subset = find_layers(layer)
        wr = {n: WrappedGPT(subset[n]) for n in subset}
        hs = [subset[n].register_forward_hook(
            (lambda nm: (lambda _, inp, out: wr[nm].add_batch(inp[0].data, out.data)))(n)) for n in subset]
        for j in range(len(samples)):
            outs[j] = layer(inps[j].unsqueeze(0), **fw_kw)[0]
        for h in hs:
            h.remove()
        for n in subset:
            key = f"model.layers.{i}.{n}.weight"
            W = subset[n].weight.data
            score = W.double().abs() * torch.sqrt(wr[n].sumsq64).reshape(1, -1)
            diff = (A[key].bool() != B[key].bool()).nonzero()
            groups = sorted(set((int(r), int(c) // m_) for r, c in diff))
            zero, gaps = 0, []
            for r, g in groups:
                s = torch.sort(score[r, m_ * g:m_ * (g + 1)])[0]
                if s[n_] == 0:
                    zero += 1
                else:
                    gaps.append(float((s[n_] - s[n_ - 1]) / s[n_]))
            if groups:
                gaps.sort()
                print(f"block {i} {n}: {len(groups)} groups differ, {zero} zero ties, "
                      f"gaps {', '.join(f'{x:.1e}' for x in gaps[:4])}{' …' if len(gaps) > 4 else ''}", flush=True)
            metric = W.abs() * wr[n].norm().reshape(1, -1)
            prune_nm(W, metric, n_, m_)
        for j in range(len(samples)):
            outs[j] = layer(inps[j].unsqueeze(0), **fw_kw)[0]
        inps, outs = outs, inps
