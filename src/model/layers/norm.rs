//! RMSNorm (Llama) and LayerNorm (OPT).

use anyhow::Result;
use candle_core::Tensor;

#[derive(Clone, Debug)]
pub enum Norm {
    /// `y = w ⊙ x / sqrt(mean(x²) + eps)`
    Rms { name: String, weight: Tensor, eps: f64 },
    /// `y = w ⊙ (x − μ) / sqrt(var + eps) + b`
    Layer {
        name: String,
        weight: Tensor,
        bias: Tensor,
        eps: f64,
    },
}

impl Norm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(match self {
            Norm::Rms { weight, eps, .. } => candle_nn::ops::rms_norm(&x, weight, *eps as f32)?,
            Norm::Layer {
                weight, bias, eps, ..
            } => candle_nn::ops::layer_norm(&x, weight, bias, *eps as f32)?,
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Norm::Rms { name, .. } | Norm::Layer { name, .. } => name,
        }
    }
}
