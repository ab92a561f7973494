//! Fused causal softmax for attention scores: `softmax(scale · s + causal mask)` over the last
//! axis, computing exponentials only for the visible (j ≤ i) part of each row.

use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

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
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("causal-softmax expects f32 scores");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("causal-softmax expects contiguous scores");
        };
        let data = &data[start..end];
        let cols = layout.dims()[layout.dims().len() - 1];
        let (t, scale) = (self.t, self.scale);
        let mut out = vec![0f32; data.len()];
        out.par_chunks_mut(cols)
            .zip(data.par_chunks(cols))
            .enumerate()
            .for_each(|(r, (o, s))| {
                let i = r % t;
                let vis = &s[..=i];
                let m = vis.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) * scale;
                let mut sum = 0f32;
                for (oj, &sj) in o[..=i].iter_mut().zip(vis) {
                    let e = (sj * scale - m).exp();
                    *oj = e;
                    sum += e;
                }
                let inv = 1.0 / sum;
                o[..=i].iter_mut().for_each(|x| *x *= inv);
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `scores`: `[..., g·t, t]` with rows ordered `(group, query position)`.
pub fn causal_softmax(scores: &Tensor, t: usize, scale: f64, mask: &Tensor) -> Result<Tensor> {
    if scores.device().is_cpu() {
        let s = scores.contiguous()?;
        Ok(s.apply_op1_no_bwd(&CausalSoftmax {
            t,
            scale: scale as f32,
        })?)
    } else {
        let s = (scores * scale)?.broadcast_add(mask)?;
        Ok(candle_nn::ops::softmax_last_dim(&s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_masked_softmax() -> Result<()> {
        let (g, t) = (3, 7);
        let s = Tensor::randn(0f32, 2.0, (2, 2, g * t, t), &Device::Cpu)?;
        let ctx = crate::model::layers::AttnCtx::new(t, g, None, &Device::Cpu)?;
        let fused = causal_softmax(&s, t, 0.37, &ctx.mask)?;
        let reference = candle_nn::ops::softmax_last_dim(&(&s * 0.37)?.broadcast_add(&ctx.mask)?)?;
        let d = (fused - reference)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(d < 1e-6, "max diff {d}");
        Ok(())
    }
}
