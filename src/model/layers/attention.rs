//! Multi-head causal self-attention with optional RoPE and grouped-query heads (GQA).
//!
//! GQA is computed without `repeat_kv`: the query heads that share a key/value head are stacked
//! along the sequence axis (`[B, kv, groups·T, d]`), so one batched matmul serves the whole group
//! and keys/values are never copied.

use super::Linear;
use crate::kernels::gemm::bmm;
use crate::relevance::rules::{uniform_share, Bwd};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, D};

/// Rotary position embedding (HF "rotate half" layout) with its inverse frequencies.
#[derive(Clone, Debug)]
pub struct Rope {
    /// `[head_dim / 2]`, f32 as HF computes them.
    pub inv_freq: Vec<f32>,
    /// Multiplier applied to cos/sin (HF's `attention_scaling`; 1 except for some rope types).
    pub attention_scaling: f32,
}

impl Rope {
    /// `cos`, `sin`: `[t, head_dim/2]` for positions `0..t`.
    pub fn tables(&self, t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        self.tables_from(0, t, device)
    }

    /// `cos`, `sin`: `[t, head_dim/2]` for positions `start..start + t` (cached decoding).
    pub fn tables_from(&self, start: usize, t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let h = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * h);
        let mut sin = Vec::with_capacity(t * h);
        for p in start..start + t {
            for &f in &self.inv_freq {
                // f32 product as in HF (inv_freq[:, None] @ position_ids[None, :] in float32).
                let a = f * p as f32;
                cos.push(a.cos() * self.attention_scaling);
                sin.push(a.sin() * self.attention_scaling);
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, h), device)?,
            Tensor::from_vec(sin, (t, h), device)?,
        ))
    }
}

/// Per-forward constants shared by every layer: RoPE tables and the causal mask.
pub struct AttnCtx {
    pub seq_len: usize,
    pub rope: Option<(Tensor, Tensor)>,
    /// `-sin`, for the transposed rotation in the backward pass.
    pub neg_sin: Option<Tensor>,
    /// `[groups·T, T]`: 0 on and below the diagonal, −∞ above, stacked `groups` times (only
    /// off the CPU, whose softmax kernel applies the causal structure itself).
    pub mask: Option<Tensor>,
}

impl AttnCtx {
    pub fn new(
        seq_len: usize,
        groups: usize,
        rope: Option<&Rope>,
        device: &Device,
    ) -> Result<Self> {
        let mask = if device.is_cpu() {
            None
        } else {
            let mut m = vec![0f32; groups * seq_len * seq_len];
            for g in 0..groups {
                for i in 0..seq_len {
                    let row = &mut m[(g * seq_len + i) * seq_len..(g * seq_len + i + 1) * seq_len];
                    for v in row.iter_mut().skip(i + 1) {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
            Some(Tensor::from_vec(m, (groups * seq_len, seq_len), device)?)
        };
        let rope = match rope {
            Some(r) => Some(r.tables(seq_len, device)?),
            None => None,
        };
        let neg_sin = match &rope {
            Some((_, sin)) => Some(sin.neg()?),
            None => None,
        };
        Ok(Self {
            seq_len,
            rope,
            neg_sin,
            mask,
        })
    }
}

/// Bytes of one `[g·T, T]` gradient formed at a time in the backward pass (at least one KV
/// head's).
const ATTN_CHUNK_BYTES: usize = 64 << 20;

#[derive(Clone, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope: Option<Rope>,
    /// Score scale, `1/sqrt(head_dim)`.
    pub scale: f64,
}

impl Attention {
    pub fn groups(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// `[B, T, n·d]` → `[B, n, T, d]` (contiguous).
    fn heads(&self, x: &Tensor, n: usize) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        Ok(x.reshape((b, t, n, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// `x`: `[B, T, hidden]` (already normalised) → `[B, T, hidden]`.
    pub fn forward(&self, x: &Tensor, ctx: &AttnCtx) -> Result<Tensor> {
        Ok(self.forward_t(x, ctx, false)?.0)
    }

    /// Forward, optionally keeping what the backward pass needs.
    pub fn forward_t(
        &self,
        x: &Tensor,
        ctx: &AttnCtx,
        keep: bool,
    ) -> Result<(Tensor, Option<AttnSaved>)> {
        let (b, t, _) = x.dims3()?;
        if t != ctx.seq_len {
            bail!(
                "attention context built for {} tokens, got {t}",
                ctx.seq_len
            );
        }
        let (kv, g, d) = (self.n_kv_heads, self.groups(), self.head_dim);
        let mut q = self.heads(&self.q.forward(x)?, self.n_heads)?;
        let mut k = self.heads(&self.k.forward(x)?, kv)?;
        let v = self.heads(&self.v.forward(x)?, kv)?;
        if let Some((cos, sin)) = &ctx.rope {
            q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
            k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        }
        // Query heads of one KV group stacked along the sequence axis.
        let q = q.reshape((b, kv, g * t, d))?;
        let scores = bmm(&q, &k.t()?)?;
        let probs = crate::kernels::causal_softmax(&scores, t, self.scale, ctx.mask.as_ref())?;
        let ctxv = bmm(&probs, &v)?; // [B, kv, g·T, d]
        let merged = ctxv
            .reshape((b, self.n_heads, t, d))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, self.n_heads * d))?;
        debug_assert_eq!(merged.dtype(), DType::F32);
        let y = self.o.forward(&merged)?;
        let saved = keep.then(|| AttnSaved {
            x: x.clone(),
            q,
            k,
            v,
            probs,
            merged,
        });
        Ok((y, saved))
    }

    /// Cached decoding: one new position per sequence (`x`: `[B, 1, hidden]`, normalised),
    /// with `rope` the cos/sin rows of its position (`[1, d/2]`). Attends to every cached
    /// position and appends its own key and value to the cache.
    pub fn forward_step(
        &self,
        x: &Tensor,
        cache: &mut KvCache,
        rope: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let b = x.dims3()?.0;
        let (kv, g, d) = (self.n_kv_heads, self.groups(), self.head_dim);
        let mut q = self.heads(&self.q.forward(x)?, self.n_heads)?;
        let mut k = self.heads(&self.k.forward(x)?, kv)?;
        let v = self.heads(&self.v.forward(x)?, kv)?;
        if let Some((cos, sin)) = rope {
            q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
            k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        }
        cache.k = Tensor::cat(&[&cache.k, &k], 2)?;
        cache.v = Tensor::cat(&[&cache.v, &v], 2)?;
        let q = q.reshape((b, kv, g, d))?;
        let scores = (bmm(&q, &cache.k.t()?)? * self.scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let merged = bmm(&probs, &cache.v)?.reshape((b, 1, self.n_heads * d))?;
        self.o.forward(&merged)
    }

    /// AttnLRP backward: softmax and linears by their plain gradient; the two bilinear products
    /// (`q·kᵀ`, `A·v`) split uniformly between their operands, so q and k receive ¼ and v ½ of
    /// the plain gradient. Under `Rule::Grad` everything is the plain gradient.
    pub fn backward(
        &self,
        sv: &AttnSaved,
        g_y: &Tensor,
        ctx: &AttnCtx,
        bwd: &mut Bwd,
    ) -> Result<Tensor> {
        let (b, t, _) = g_y.dims3()?;
        let (kv, g, d) = (self.n_kv_heads, self.groups(), self.head_dim);
        let share = uniform_share(bwd.rule, 2);
        let g_merged = self.o.backward(&sv.merged, g_y, bwd, true)?;
        let g_c = g_merged
            .reshape((b, t, self.n_heads, d))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, kv, g * t, d))?;
        // KV heads a few at a time: the `[g·T, T]` gradients of long sequences are the largest
        // tensors of a pass (each head's products are the same as in one batched call).
        let per_head = g * t * t * 4;
        let step = (ATTN_CHUNK_BYTES / per_head.max(1)).clamp(1, kv);
        let (mut gqs, mut gks, mut gvs) = (Vec::new(), Vec::new(), Vec::new());
        for h in (0..kv).step_by(step) {
            let n = step.min(kv - h);
            let part = |x: &Tensor| x.narrow(1, h, n);
            let (probs, g_c) = (part(&sv.probs)?, part(&g_c)?);
            // A·v: the A path gets `share` of the gradient, applied below with the other factors.
            let g_p = bmm(&g_c, &part(&sv.v)?.t()?)?;
            gvs.push((bmm(&probs.t()?, &g_c)? * share)?); // [B, n, T, d]
                                                          // softmax g_s = p ⊙ (g_p − Σ p ⊙ g_p) (masked entries have p = 0), then the score
                                                          // scale and the q·kᵀ share.
            let c = self.scale * share * share;
            let g_s = crate::kernels::causal_softmax_backward(&probs, &g_p, t, c)?;
            drop(g_p);
            // q·kᵀ
            gqs.push(bmm(&g_s, &part(&sv.k)?)?); // [B, n, g·T, d]
            gks.push(bmm(&g_s.t()?, &part(&sv.q)?)?); // [B, n, T, d]
        }
        let cat = |v: Vec<Tensor>| -> Result<Tensor> {
            Ok(if v.len() == 1 {
                v.into_iter().next().expect("one")
            } else {
                Tensor::cat(&v, 1)?
            })
        };
        let g_v = cat(gvs)?;
        let mut g_q = cat(gqs)?.reshape((b, self.n_heads, t, d))?;
        let mut g_k = cat(gks)?.contiguous()?;
        if let (Some((cos, _)), Some(neg_sin)) = (&ctx.rope, &ctx.neg_sin) {
            // The transposed rotation undoes RoPE.
            g_q = candle_nn::rotary_emb::rope(&g_q.contiguous()?, cos, neg_sin)?;
            g_k = candle_nn::rotary_emb::rope(&g_k, cos, neg_sin)?;
        }
        let flat = |x: Tensor, n: usize| -> Result<Tensor> {
            Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, t, n * d))?)
        };
        let gx = self
            .q
            .backward(&sv.x, &flat(g_q, self.n_heads)?, bwd, true)?;
        let gx = (gx + self.k.backward(&sv.x, &flat(g_k, kv)?, bwd, true)?)?;
        Ok((gx + self.v.backward(&sv.x, &flat(g_v, kv)?, bwd, true)?)?)
    }
}

/// Roped keys and values of the positions seen so far, `[B, kv, T, d]` each.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub k: Tensor,
    pub v: Tensor,
}

/// What the attention backward pass needs from the forward.
pub struct AttnSaved {
    pub x: Tensor,
    /// Roped queries, stacked per KV group: `[B, kv, g·T, d]`.
    pub q: Tensor,
    /// Roped keys `[B, kv, T, d]`.
    pub k: Tensor,
    pub v: Tensor,
    /// Attention probabilities `[B, kv, g·T, T]`.
    pub probs: Tensor,
    /// Heads merged, the input of `o`: `[B, T, heads·d]`.
    pub merged: Tensor,
}

/// Softmax over the last axis, exposed for tests of the attention pieces.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}
