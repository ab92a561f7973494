//! `y = x Wᵀ + b`, and its relevance rule: LRP-ε with ε → 0 (the plain gradient), or with an
//! explicit ε. The weight relevance `W ⊙ (g_yᵀ x)` is accumulated per sample under `name`.
//!
//! Weights are public so that pruning can replace them; `name` is the HF prefix
//! (`model.layers.3.self_attn.q_proj`), the key under which scores and masks are stored.

use super::f32_of;
use crate::kernels::gemm::mm;
use crate::lrp::rules::{epsilon_scale, Bwd, Rule};
use anyhow::Result;
use candle_core::Tensor;

#[derive(Clone, Debug)]
pub struct Linear {
    pub name: String,
    /// `[out, in]`, as in the checkpoint.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(name: impl Into<String>, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            name: name.into(),
            weight,
            bias,
        }
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x`: `[..., in]` → `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (lead, inp) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let w = f32_of(&self.weight)?;
        let x2 = x.reshape((rows, inp[0]))?;
        let mut y = mm(&x2, &w.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(f32_of(b)?.as_ref())?;
        }
        let mut out = lead.to_vec();
        out.push(self.out_features());
        Ok(y.reshape(out)?)
    }

    /// Backward from `g_y` `[B, T, out]` given the forward input `x` `[B, T, in]`; returns `g_x`.
    /// With `accumulate`, adds this layer's weight (and bias) relevance for each sample.
    pub fn backward(
        &self,
        x: &Tensor,
        g_y: &Tensor,
        bwd: &mut Bwd,
        accumulate: bool,
    ) -> Result<Tensor> {
        let g = match bwd.rule {
            Rule::Lrp { epsilon: Some(eps) } if eps > 0.0 => {
                epsilon_scale(g_y, &self.forward(x)?, eps)?
            }
            _ => g_y.clone(),
        };
        let (b, t, out) = g.dims3()?;
        let inp = self.in_features();
        let w = f32_of(&self.weight)?;
        let g2 = g.reshape((b * t, out))?;
        let g_x = mm(&g2, &w)?.reshape((b, t, inp))?;
        if accumulate && bwd.acc.enabled {
            bwd.acc.ensure(&self.name, out, inp);
            for s in 0..b {
                let gs = g.get(s)?; // [T, out]
                let xs = x.get(s)?.contiguous()?; // [T, in]
                if bwd.acc.per_weight {
                    let grad = mm(&gs.t()?, &xs)?; // [out, in]
                    bwd.acc.add_weight(&self.name, &self.weight, &grad)?;
                    if let Some(bias) = &self.bias {
                        bwd.acc.add_bias(&self.name, bias, &gs.sum(0)?)?;
                    }
                }
                bwd.acc
                    .add_inputs(&self.name, &(&xs * g_x.get(s)?)?.sum(0)?)?;
            }
        }
        Ok(g_x)
    }
}
