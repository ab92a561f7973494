//! `y = x Wᵀ + b`. Weights are public so that pruning can replace them; `name` is the HF prefix
//! (`model.layers.3.self_attn.q_proj`), the key under which scores and masks are stored.

use super::f32_of;
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
        let mut y = x2.matmul(&w.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(f32_of(b)?.as_ref())?;
        }
        let mut out = lead.to_vec();
        out.push(self.out_features());
        Ok(y.reshape(out)?)
    }
}
