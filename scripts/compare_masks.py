import sys, re
from safetensors.numpy import load_file
a = load_file(sys.argv[1]); b = load_file(sys.argv[2])
ka, kb = set(a), set(b)
if ka != kb: print("key mismatch", sorted(ka ^ kb)[:10])
def key(k):
    m = re.match(r"model\.layers\.(\d+)\.(.*)", k); return (int(m.group(1)), ["self_attn.q_proj","self_attn.k_proj","self_attn.v_proj","self_attn.o_proj","mlp.gate_proj","mlp.up_proj","mlp.down_proj"].index(m.group(2)[:-7]))
tot = dif = 0; first = None
per_layer = {}
for k in sorted(ka & kb, key=key):
    x, y = a[k].astype(bool), b[k].astype(bool)
    assert x.shape == y.shape, (k, x.shape, y.shape)
    d = int((x != y).sum()) // 2 if x.sum()==y.sum() else int((x!=y).sum())
    nd = int((x != y).sum())
    tot += x.size; dif += nd
    L = key(k)[0]; per_layer.setdefault(L, [0, 0, []]); per_layer[L][0] += nd; per_layer[L][1] += x.size
    if nd: per_layer[L][2].append(f"{k.split('.',3)[3][:-7]}:{nd}")
    if nd and first is None: first = k
for L,(nd,n,det) in sorted(per_layer.items()):
    print(f"layer {L:2d}: {nd:8d} differing entries of {n} ({100*nd/n:.3f}%)  {' '.join(det)}")
print(f"total differing: {dif} of {tot} ({100*dif/tot:.4f}%); first divergence: {first}")
