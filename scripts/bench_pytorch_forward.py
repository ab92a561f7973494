#!/usr/bin/env python3
# Reference timing of the PyTorch eager forward on SmolLM2-135M (run in the throwaway venv of
# scripts/check_hf_load.py); compare with `cargo bench --bench forward` run right after it.
import time, torch, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(2)
d = "/work/shared/models/smollm2-135m"
m = AutoModelForCausalLM.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", torch_dtype=torch.float32, attn_implementation="eager").eval()
ids = torch.randint(100, 40000, (1, 512))
with torch.no_grad():
    for t in (128, 512):
        x = ids[:, :t]
        m(x)
        ts = []
        for _ in range(5):
            s = time.perf_counter(); m(x); ts.append(time.perf_counter() - s)
        ts.sort()
        print(f"pytorch forward {t}: median {ts[2]:.3f} min {ts[0]:.3f}", flush=True)
