#!/usr/bin/env python3
"""Faithful Wanda (locuslab/wanda lib/prune.py prune_wanda + lib/layerwrapper.py WrappedGPT)
on SmolLM2-135M (GGUF Q4_1 dequantised to float32 by transformers), with the exact
calibration windows and the WikiText-2 perplexity protocol of ../shared (a throwaway venv with torch and transformers; not used by sparc3 or CI).
Measured: official variant 66.134 vs sparc3 66.125 (sparc3 compress --method wanda, same windows).

Variants (for hunting the 66.38 reference) via --variant:
  official   : as locuslab (running-mean scaler_row in fp32, one hooked forward of the
               dense layer for all sublayers, prune, second forward -> next inputs)
  nsumsq     : plain float64 sum of squares (sparc3-style) instead of running mean
  noreplay   : stats from the dense model (no pruned-input replay; outs from dense layer)
  seq        : stats for each sublayer group taken after the previous groups of the same
               layer were pruned (SparseGPT-"true-sequential" style)
  noupdate   : official, but the next layer's inputs are the outputs of the first
               (dense) forward instead of the pruned layer's (i.e. missing second forward)
--dtype float16/bfloat16 runs the calibration in that dtype (eval always float32 weights
of the pruned model, cast back).

--method sparsegpt: faithful SparseGPT as the Wanda repository runs it (lib/prune.py
prune_sparsegpt + lib/sparsegpt.py SparseGPT.fasterprune, itself IST-DASLab/sparsegpt's):
Hessian 2/n·XXᵀ as a running mean, dead inputs, 1% damping, upper Cholesky of H⁻¹, 128-column
blocks whose mask is the block's lowest W²/diag(H⁻¹)² (all rows together), OBS updates; one
hooked forward of the dense block for all its linears, prune, a second forward for the next
block's inputs. Measured (float32, 73 min on 2 cores): 59.909; with --obs-dtype float64
(Hessian and OBS in float64, as sparc3): 60.872; sparc3 60.31; the issue's figure 60.42.

--dtype float16 with --half-gemm emulate (the default) runs the calibration on float16
weights and activations with every matrix product done in float32 and rounded back, as
CUDA's half GEMMs accumulate (checked: dense float16 perplexity on 2 windows 28.2298
emulated, 28.2301 with torch's native CPU half kernels, 28.2326 in float32).
--prune-n/--prune-m: Wanda's N:M branch (torch.topk of each M consecutive inputs per row).
"""
import argparse, json, math, os, sys, time
import torch
import torch.nn as nn

p = argparse.ArgumentParser()
p.add_argument("--model-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/") + "models/smollm2-135m")
p.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
p.add_argument("--calib", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/") + "data/c4/calib-smollm2-128x512.jsonl")
p.add_argument("--eval", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/") + "data/wikitext-2-raw/wiki.test.joined.txt")
p.add_argument("--nsamples", type=int, default=128)
p.add_argument("--ratio", type=float, default=0.5)
p.add_argument("--windows", type=int, default=64)
p.add_argument("--seqlen", type=int, default=512)
p.add_argument("--variant", default="official")
p.add_argument("--method", default="wanda", choices=["wanda", "sparsegpt"])
p.add_argument("--dtype", default="float32")
p.add_argument("--obs-dtype", default="float32", choices=["float32", "float64"],
               help="SparseGPT's Hessian and OBS arithmetic (the reference: float32)")
p.add_argument("--half-gemm", default="emulate", choices=["emulate", "native"],
               help="float16/bfloat16 on CPU: 'emulate' does every matrix product in float32 on the "
                    "half-precision values and rounds the result (as CUDA's half GEMMs accumulate in "
                    "float32; about 7x faster here than torch's CPU half kernels)")
p.add_argument("--eval-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
               help="dtype of the evaluated model (the Wanda repository evaluates in float16)")
p.add_argument("--prune-n", type=int, default=0, help="N:M pattern (Wanda): prune N of every M")
p.add_argument("--prune-m", type=int, default=0)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--dense", action="store_true", help="only evaluate the dense model")
p.add_argument("--no-eval", action="store_true")
p.add_argument("--mask-out", default=None)
p.add_argument("--json-out", default=None)
args = p.parse_args()

torch.set_num_threads(args.threads)
from transformers import LlamaForCausalLM
from tokenizers import Tokenizer


def emulate_half_gemm():
    """Matrix products of half-precision tensors in float32, rounded back to the half dtype."""
    import torch.nn.functional as F
    import transformers.models.llama.modeling_llama as ml
    halfs = (torch.float16, torch.bfloat16)
    lin = F.linear

    def linear(x, w, b=None):
        if x.dtype in halfs:
            return lin(x.float(), w.float(), None if b is None else b.float()).to(x.dtype)
        return lin(x, w, b)

    class TorchProxy:
        def __getattr__(self, k):
            return getattr(torch, k)

        @staticmethod
        def matmul(a, b):
            if a.dtype in halfs:
                return torch.matmul(a.float(), b.float()).to(a.dtype)
            return torch.matmul(a, b)

    F.linear = linear
    ml.torch = TorchProxy()


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def load_model():
    cache_f = os.environ.get("WANDA_CACHE", "/tmp/wanda-dense-fp32.pt")
    if os.path.exists(cache_f):
        from transformers import LlamaConfig
        cfg = LlamaConfig.from_pretrained(args.model_dir)
        cfg._attn_implementation = "eager"
        m = LlamaForCausalLM(cfg)
        m.load_state_dict(torch.load(cache_f), strict=True)
    else:
        m = LlamaForCausalLM.from_pretrained(args.model_dir, gguf_file=args.gguf,
                                             torch_dtype=torch.float32, attn_implementation="eager")
        torch.save(m.state_dict(), cache_f)
    m.eval()
    m.config.use_cache = False
    return m


@torch.no_grad()
def eval_ppl(model):
    tok = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
    text = open(args.eval, encoding="utf-8").read()
    ids = tok.encode(text, add_special_tokens=False).ids
    L = args.seqlen
    nlls = []
    for w in range(args.windows):
        x = torch.tensor(ids[w * L:(w + 1) * L]).unsqueeze(0)
        logits = model(x, use_cache=False).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="mean").item()
        nlls.append(nll)
    mean = sum(nlls) / len(nlls)
    return mean, math.exp(mean), nlls


def find_layers(module, layers=(nn.Linear,), name=""):
    if type(module) in layers:
        return {name: module}
    res = {}
    for name1, child in module.named_children():
        res.update(find_layers(child, layers=layers, name=name + "." + name1 if name != "" else name1))
    return res


class WrappedGPT:
    """lib/layerwrapper.py WrappedGPT (only what prune_wanda uses)."""

    def __init__(self, layer, mode="official"):
        self.layer = layer
        self.dev = layer.weight.device
        self.rows, self.columns = layer.weight.shape
        self.mode = mode
        self.scaler_row = torch.zeros((self.columns), device=self.dev)  # float32
        self.sumsq64 = torch.zeros((self.columns), dtype=torch.float64)
        self.nsamples = 0

    def add_batch(self, inp, out):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if isinstance(self.layer, nn.Linear):
            if len(inp.shape) == 3:
                inp = inp.reshape((-1, inp.shape[-1]))
            inp = inp.t()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(torch.float32)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples
        self.sumsq64 += (inp.double() ** 2).sum(1)

    def norm(self):
        if self.mode == "nsumsq":
            return torch.sqrt(self.sumsq64).float()
        return torch.sqrt(self.scaler_row)


def prune_rows(W, metric, ratio):
    W_mask = torch.zeros_like(metric) == 1
    sort_res = torch.sort(metric, dim=-1, stable=True)
    indices = sort_res[1][:, :int(metric.shape[1] * ratio)]
    W_mask.scatter_(1, indices, True)
    W[W_mask] = 0
    return W_mask


def prune_nm(W, metric, n, m):
    """lib/prune.py's N:M branch: the N lowest of every M consecutive inputs (torch.topk)."""
    W_mask = torch.zeros_like(metric) == 1
    for ii in range(metric.shape[1]):
        if ii % m == 0:
            tmp = metric[:, ii:(ii + m)].float()
            W_mask.scatter_(1, ii + torch.topk(tmp, n, dim=1, largest=False)[1], True)
    W[W_mask] = 0
    return W_mask


@torch.no_grad()
def capture_inputs(model, samples, dtype):
    """The first block's inputs for every sample and the keyword arguments of its forward
    (the references' Catcher), in `dtype`."""
    layers = model.model.layers
    n, L, hid = len(samples), samples.shape[1], model.config.hidden_size
    inps = torch.zeros((n, L, hid), dtype=dtype)
    cache = {"i": 0, "kw": None}

    class Catcher(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, inp, **kwargs):
            inps[cache["i"]] = inp[0]
            cache["i"] += 1
            cache["kw"] = kwargs
            raise ValueError

    layers[0] = Catcher(layers[0])
    for j in range(n):
        try:
            model(samples[j:j + 1], use_cache=False)
        except ValueError:
            pass
    layers[0] = layers[0].module
    kw = cache["kw"]
    fw_kw = {"attention_mask": kw.get("attention_mask"), "position_ids": kw.get("position_ids"),
             "position_embeddings": tuple(t.to(dtype) for t in kw["position_embeddings"]), "use_cache": False}
    if fw_kw["attention_mask"] is not None:
        fw_kw["attention_mask"] = fw_kw["attention_mask"].to(dtype)
    return inps, fw_kw


@torch.no_grad()
def prune_wanda(model, samples, variant, dtype):
    layers = model.model.layers
    n = len(samples)
    inps, fw_kw = capture_inputs(model, samples, dtype)
    outs = torch.zeros_like(inps)
    masks = {}

    groups = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
              ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]

    for i in range(len(layers)):
        layer = layers[i]
        subset = find_layers(layer)
        order = groups if variant == "seq" else [list(subset.keys())]
        src = inps
        for grp in order:
            wrapped = {name: WrappedGPT(subset[name], mode=variant) for name in grp}

            def add_batch(name):
                def tmp(_, inp, out):
                    wrapped[name].add_batch(inp[0].data, out.data)
                return tmp

            handles = [subset[name].register_forward_hook(add_batch(name)) for name in grp]
            for j in range(n):
                outs[j] = layer(src[j].unsqueeze(0), **fw_kw)[0]
            for h in handles:
                h.remove()
            for name in grp:
                W = subset[name].weight.data
                W_metric = torch.abs(W.float()) * wrapped[name].norm().reshape((1, -1))
                m = prune_nm(W, W_metric, args.prune_n, args.prune_m) if args.prune_n else \
                    prune_rows(W, W_metric, args.ratio)
                masks[f"model.layers.{i}.{name}.weight"] = m.to(torch.uint8).contiguous()
        if variant == "noupdate":
            pass  # outs are from the (last) dense forward
        else:
            for j in range(n):
                outs[j] = layer(src[j].unsqueeze(0), **fw_kw)[0]
        inps, outs = outs, inps
        log(f"layer {i} pruned")
    return masks


@torch.no_grad()
def prune_wanda_noreplay(model, samples):
    """Stats from the dense model's own activations (no replay through pruned layers)."""
    subset = find_layers(model.model.layers)
    wrapped = {name: WrappedGPT(mod) for name, mod in subset.items()}
    handles = []
    for name, mod in subset.items():
        handles.append(mod.register_forward_hook(
            (lambda nm: (lambda _, inp, out: wrapped[nm].add_batch(inp[0].data, out.data)))(name)))
    for j in range(len(samples)):
        model.model(samples[j:j + 1], use_cache=False)
    for h in handles:
        h.remove()
    masks = {}
    for name, mod in subset.items():
        W = mod.weight.data
        m = prune_rows(W, torch.abs(W) * torch.sqrt(wrapped[name].scaler_row).reshape(1, -1), args.ratio)
        masks[f"model.layers.{name}.weight"] = m.to(torch.uint8).contiguous()
    return masks


class SparseGPT:
    """lib/sparsegpt.py SparseGPT (unstructured path)."""

    def __init__(self, layer, dt=torch.float32):
        self.layer = layer
        self.dt = dt
        self.rows, self.columns = layer.weight.shape
        self.H = torch.zeros((self.columns, self.columns), dtype=dt)
        self.nsamples = 0

    def add_batch(self, inp, out):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.to(self.dt)
        self.H += inp.matmul(inp.t())

    def fasterprune(self, sparsity, blocksize=128, percdamp=0.01):
        W = self.layer.weight.data.clone().to(self.dt)
        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H
        full_mask = torch.zeros_like(W, dtype=torch.bool)
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            W[:, i1:i2] = Q1
            full_mask[:, i1:i2] = mask1
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
        self.layer.weight.data = W.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)
        return full_mask


@torch.no_grad()
def prune_sparsegpt(model, samples, dtype):
    """lib/prune.py prune_sparsegpt: per block, one hooked forward for every linear, prune each,
    then the pruned block's outputs become the next block's inputs."""
    layers = model.model.layers
    n = len(samples)
    inps, fw_kw = capture_inputs(model, samples, dtype)
    outs = torch.zeros_like(inps)
    masks = {}
    for i in range(len(layers)):
        layer = layers[i]
        subset = find_layers(layer)
        odt = {"float32": torch.float32, "float64": torch.float64}[args.obs_dtype]
        gpts = {name: SparseGPT(subset[name], odt) for name in subset}
        handles = [subset[name].register_forward_hook(
            (lambda nm: (lambda _, inp, out: gpts[nm].add_batch(inp[0].data, out.data)))(name)) for name in subset]
        for j in range(n):
            outs[j] = layer(inps[j].unsqueeze(0), **fw_kw)[0]
        for h in handles:
            h.remove()
        for name in gpts:
            m = gpts[name].fasterprune(args.ratio)
            masks[f"model.layers.{i}.{name}.weight"] = m.to(torch.uint8).contiguous()
        for j in range(n):
            outs[j] = layer(inps[j].unsqueeze(0), **fw_kw)[0]
        inps, outs = outs, inps
        log(f"layer {i} pruned")
    return masks


def main():
    t0 = time.time()
    model = load_model()
    log("loaded", f"{time.time() - t0:.1f}s")
    res = {"variant": args.variant, "dtype": args.dtype, "nsamples": args.nsamples,
           "pattern": f"{args.prune_n}:{args.prune_m}" if args.prune_n else "unstructured"}
    if not args.dense:
        recs = [json.loads(l) for l in open(args.calib)][:args.nsamples]
        samples = torch.tensor([r["ids"][:args.seqlen] for r in recs], dtype=torch.long)
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
        if dtype != torch.float32:
            orig = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.to(dtype)
            if args.half_gemm == "emulate":
                emulate_half_gemm()
            res["half_gemm"] = args.half_gemm
        t1 = time.time()
        if args.method == "sparsegpt":
            res["method"] = "sparsegpt"
            res["obs_dtype"] = args.obs_dtype
            masks = prune_sparsegpt(model, samples, dtype)
        elif args.variant == "noreplay":
            masks = prune_wanda_noreplay(model, samples)
        else:
            masks = prune_wanda(model, samples, args.variant, dtype)
        log(f"pruned in {time.time() - t1:.1f}s")
        if dtype != torch.float32 and args.method == "sparsegpt":
            model.to(torch.float32)  # the OBS updates are the result: keep them
        elif dtype != torch.float32:
            model.to(torch.float32)
            sd = model.state_dict()
            for k in sd:
                sd[k].copy_(orig[k])
            for k, m in masks.items():
                sd[k][m.bool()] = 0
        res["prune_s"] = time.time() - t1
        if args.mask_out:
            from safetensors.torch import save_file
            save_file(masks, args.mask_out)
        tot = sum(m.numel() for m in masks.values())
        res["sparsity"] = sum(int(m.sum()) for m in masks.values()) / tot
    if not args.no_eval:
        edt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.eval_dtype]
        if edt != torch.float32:
            model.to(edt)
            if args.half_gemm == "emulate":
                emulate_half_gemm()
        res["eval_dtype"] = args.eval_dtype
        t2 = time.time()
        mean, ppl, nlls = eval_ppl(model)
        res.update(mean_nll=mean, ppl=ppl, per_window=nlls, eval_s=time.time() - t2)
        log(f"ppl {ppl:.4f} mean nll {mean:.6f}")
    if args.json_out:
        json.dump(res, open(args.json_out, "w"), indent=1)


main()
