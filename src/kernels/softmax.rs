//! Fused causal softmax for attention scores, `softmax(scale · s + causal mask)` over the last
//! axis, and its backward pass; both touch only the visible (j ≤ i) part of each row.

use super::fastmath;
use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// Rows handled per parallel task (rows are short and many).
fn rows_per_task(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

fn contiguous<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what} expects f32 input");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what} expects contiguous input");
    };
    Ok(&data[start..end])
}

struct CausalSoftmax {
    /// Query positions per stacked group (rows are `group · t + i`).
    t: usize,
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = contiguous(storage, layout, "causal-softmax")?;
        let cols = layout.dims()[layout.dims().len() - 1];
        let (t, scale) = (self.t, self.scale);
        let rpt = rows_per_task(cols);
        let mut out = vec![0f32; data.len()];
        out.par_chunks_mut(cols * rpt)
            .zip(data.par_chunks(cols * rpt))
            .enumerate()
            .for_each(|(c, (oc, sc))| {
                fastmath::wide(
                    #[inline(always)]
                    || {
                        for (k, (o, s)) in oc.chunks_mut(cols).zip(sc.chunks(cols)).enumerate() {
                            let i = (c * rpt + k) % t;
                            let vis = &s[..=i];
                            let m = fastmath::max16(vis) * scale;
                            for (oj, &sj) in o[..=i].iter_mut().zip(vis) {
                                *oj = fastmath::exp(sj * scale - m);
                            }
                            let inv = 1.0 / fastmath::sum16(&o[..=i]);
                            o[..=i].iter_mut().for_each(|x| *x *= inv);
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `g_s = c · p ⊙ (g_p − Σ_j p_j g_p,j)` on the visible part (p = 0 elsewhere).
struct CausalSoftmaxBackward {
    t: usize,
    c: f32,
}

impl CustomOp2 for CausalSoftmaxBackward {
    fn name(&self) -> &'static str {
        "causal-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = contiguous(s1, l1, "causal-softmax-backward")?;
        let g = contiguous(s2, l2, "causal-softmax-backward")?;
        if p.len() != g.len() {
            candle_core::bail!("causal-softmax-backward: shape mismatch");
        }
        let cols = l1.dims()[l1.dims().len() - 1];
        let (t, c) = (self.t, self.c);
        let rpt = rows_per_task(cols);
        let mut out = vec![0f32; p.len()];
        out.par_chunks_mut(cols * rpt)
            .zip(p.par_chunks(cols * rpt).zip(g.par_chunks(cols * rpt)))
            .enumerate()
            .for_each(|(ci, (oc, (pc, gc)))| {
                fastmath::wide(
                    #[inline(always)]
                    || {
                        for (k, ((o, pr), gr)) in oc
                            .chunks_mut(cols)
                            .zip(pc.chunks(cols))
                            .zip(gc.chunks(cols))
                            .enumerate()
                        {
                            let i = (ci * rpt + k) % t;
                            let dot = fastmath::dot16(&pr[..=i], &gr[..=i]);
                            for ((oj, &pj), &gj) in o[..=i].iter_mut().zip(&pr[..=i]).zip(&gr[..=i])
                            {
                                *oj = c * pj * (gj - dot);
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `scores`: `[..., g·t, t]` with rows ordered `(group, query position)`.
pub fn causal_softmax(
    scores: &Tensor,
    t: usize,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    if scores.device().is_cpu() {
        let s = scores.contiguous()?;
        Ok(s.apply_op1_no_bwd(&CausalSoftmax {
            t,
            scale: scale as f32,
        })?)
    } else {
        let Some(mask) = mask else {
            anyhow::bail!("causal softmax off the CPU needs the mask");
        };
        let s = (scores * scale)?.broadcast_add(mask)?;
        Ok(candle_nn::ops::softmax_last_dim(&s)?)
    }
}

/// Backward of [`causal_softmax`] given its output `p` and the gradient `g_p`, times `c`.
pub fn causal_softmax_backward(p: &Tensor, g_p: &Tensor, t: usize, c: f64) -> Result<Tensor> {
    if p.device().is_cpu() {
        let (p, g) = (p.contiguous()?, g_p.contiguous()?);
        Ok(p.apply_op2_no_bwd(&g, &CausalSoftmaxBackward { t, c: c as f32 })?)
    } else {
        let dot = (p * g_p)?.sum_keepdim(D::Minus1)?;
        Ok(((p * g_p.broadcast_sub(&dot)?)? * c)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// `[groups·T, T]`: 0 on and below the diagonal, −∞ above, stacked `groups` times (the
    /// attention layer's mask).
    fn causal_mask(t: usize, groups: usize) -> Result<Tensor> {
        let mut m = vec![0f32; groups * t * t];
        for (r, row) in m.chunks_mut(t).enumerate() {
            for v in row.iter_mut().skip(r % t + 1) {
                *v = f32::NEG_INFINITY;
            }
        }
        Ok(Tensor::from_vec(m, (groups * t, t), &Device::Cpu)?)
    }

    #[test]
    fn matches_masked_softmax_and_its_gradient() -> Result<()> {
        let (g, t) = (3, 7);
        let s = Tensor::randn(0f32, 2.0, (2, 2, g * t, t), &Device::Cpu)?;
        let mask = causal_mask(t, g)?;
        let fused = causal_softmax(&s, t, 0.37, Some(&mask))?;
        let reference = candle_nn::ops::softmax_last_dim(&(&s * 0.37)?.broadcast_add(&mask)?)?;
        assert!(max_diff(&fused, &reference) < 1e-6);
        let gp = Tensor::randn(0f32, 1.0, (2, 2, g * t, t), &Device::Cpu)?;
        let fused_b = causal_softmax_backward(&fused, &gp, t, 0.5)?;
        let dot = (&reference * &gp)?.sum_keepdim(D::Minus1)?;
        let ref_b = ((&reference * gp.broadcast_sub(&dot)?)? * 0.5)?;
        assert!(max_diff(&fused_b, &ref_b) < 1e-6);
        Ok(())
    }
}
