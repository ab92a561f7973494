//! RMSNorm (Llama) and LayerNorm (OPT), with their AttnLRP identity rules: the normaliser
//! `1/rms(x)` (or `1/σ`) is treated as a constant; LayerNorm keeps its centring (LRP-0).

use crate::relevance::rules::Rule;
use anyhow::Result;
use candle_core::{Tensor, D};

#[derive(Clone, Debug)]
pub enum Norm {
    /// `y = w ⊙ x / sqrt(mean(x²) + eps)`
    Rms {
        name: String,
        weight: Tensor,
        eps: f64,
    },
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

    /// `g_x` from `g_y` given the forward input `x` (stats are recomputed, not stored).
    pub fn backward(&self, x: &Tensor, g_y: &Tensor, rule: Rule) -> Result<Tensor> {
        match self {
            Norm::Rms { weight, eps, .. } => {
                let r = (x.sqr()?.mean_keepdim(D::Minus1)? + *eps)?
                    .sqrt()?
                    .recip()?;
                let u = g_y.broadcast_mul(weight)?;
                let base = u.broadcast_mul(&r)?;
                if rule.is_lrp() {
                    return Ok(base);
                }
                // d/dx of x·r(x): r·u − x·r³·mean(u ⊙ x)
                let m = (&u * x)?.mean_keepdim(D::Minus1)?;
                let corr = x.broadcast_mul(&(r.powf(3.0)? * m)?)?;
                Ok((base - corr)?)
            }
            Norm::Layer { weight, eps, .. } => {
                let mu = x.mean_keepdim(D::Minus1)?;
                let xc = x.broadcast_sub(&mu)?;
                let inv = (xc.sqr()?.mean_keepdim(D::Minus1)? + *eps)?
                    .sqrt()?
                    .recip()?;
                let u = g_y.broadcast_mul(weight)?.broadcast_mul(&inv)?;
                let centred = u.broadcast_sub(&u.mean_keepdim(D::Minus1)?)?;
                if rule.is_lrp() {
                    return Ok(centred);
                }
                let xhat = xc.broadcast_mul(&inv)?;
                let m = (&u * &xhat)?.mean_keepdim(D::Minus1)?;
                Ok((centred - xhat.broadcast_mul(&m)?)?)
            }
        }
    }
}
