//! Feed-forward blocks: gated (Llama SwiGLU: `down(act(gate x) ⊙ up x)`) and plain
//! (OPT: `fc2(act(fc1 x))`). Relevance rules: identity rule on the activation, uniform (½/½)
//! split of the gated product; the plain gradient under `Rule::Grad`.

use super::Linear;
use crate::relevance::rules::{identity_rule, uniform_share, Bwd, Rule};
use anyhow::{bail, Result};
use candle_core::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Relu,
    /// Exact (erf) GELU, HF `gelu`.
    Gelu,
    /// Tanh approximation, HF `gelu_new` / `gelu_pytorch_tanh`.
    GeluTanh,
}

impl Activation {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            other => bail!(
                "activation '{other}' is not supported (supported: silu, relu, gelu, gelu_new)"
            ),
        })
    }

    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Silu => crate::kernels::fastmath::silu_t(x)?,
            Activation::Relu => x.relu()?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::GeluTanh => x.gelu()?,
        })
    }

    /// `g_x` from `g_y` for `y = f(x)`: identity rule under LRP (ReLU's gradient already is
    /// one), the true derivative otherwise.
    pub fn backward(self, x: &Tensor, y: &Tensor, g_y: &Tensor, rule: Rule) -> Result<Tensor> {
        if self == Activation::Relu {
            return Ok((g_y * x.gt(0f64)?.to_dtype(x.dtype())?)?);
        }
        if rule.is_lrp() {
            return identity_rule(x, y, g_y);
        }
        let d = match self {
            Activation::Relu => unreachable!(),
            Activation::Silu => {
                let s = candle_nn::ops::sigmoid(x)?;
                // σ(x)·(1 + x·(1 − σ(x)))
                (&s * ((x * (1.0 - &s)?)? + 1.0)?)?
            }
            Activation::Gelu => {
                // Φ(x) + x·φ(x)
                let cdf = ((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
                let pdf =
                    ((x.sqr()? * -0.5)?.exp()? * (1.0 / (2.0 * std::f64::consts::PI).sqrt()))?;
                (cdf? + (x * pdf)?)?
            }
            Activation::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * c)?;
                let th = inner.tanh()?;
                let dinner = ((x.sqr()? * (3.0 * 0.044715))? + 1.0)? * c;
                let sech2 = (1.0 - th.sqr()?)?;
                (((th + 1.0)? * 0.5)? + ((x * sech2)? * dinner?)? * 0.5)?
            }
        };
        Ok((g_y * d)?)
    }
}

#[derive(Clone, Debug)]
pub enum Mlp {
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
        act: Activation,
    },
    Plain {
        fc1: Linear,
        fc2: Linear,
        act: Activation,
    },
}

/// What the backward pass needs from the forward.
pub struct MlpSaved {
    pub x: Tensor,
    /// Pre-activation (`gate x` or `fc1 x`).
    pub a: Tensor,
    /// Activation output.
    pub s: Tensor,
    /// Gated only: `up x` and the product fed to `down`.
    pub u: Option<Tensor>,
    pub h: Option<Tensor>,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_t(x, false)?.0)
    }

    /// Forward, optionally keeping what the backward pass needs.
    pub fn forward_t(&self, x: &Tensor, keep: bool) -> Result<(Tensor, Option<MlpSaved>)> {
        match self {
            Mlp::Gated {
                gate,
                up,
                down,
                act,
            } => {
                let a = gate.forward(x)?;
                let u = up.forward(x)?;
                if !keep && *act == Activation::Silu {
                    // One fused pass when nothing needs to be kept.
                    let h = crate::kernels::fastmath::silu_mul(&a, &u)?;
                    return Ok((down.forward(&h)?, None));
                }
                let s = act.forward(&a)?;
                let h = (&s * &u)?;
                let y = down.forward(&h)?;
                let saved = keep.then(|| MlpSaved {
                    x: x.clone(),
                    a,
                    s,
                    u: Some(u),
                    h: Some(h),
                });
                Ok((y, saved))
            }
            Mlp::Plain { fc1, fc2, act } => {
                let a = fc1.forward(x)?;
                let s = act.forward(&a)?;
                let y = fc2.forward(&s)?;
                let saved = keep.then(|| MlpSaved {
                    x: x.clone(),
                    a,
                    s,
                    u: None,
                    h: None,
                });
                Ok((y, saved))
            }
        }
    }

    pub fn backward(&self, sv: &MlpSaved, g_y: &Tensor, bwd: &mut Bwd) -> Result<Tensor> {
        match self {
            Mlp::Gated {
                gate,
                up,
                down,
                act,
            } => {
                let (u, h) = (sv.u.as_ref().expect("gated"), sv.h.as_ref().expect("gated"));
                let g_h = down.backward(h, g_y, bwd, true)?;
                let share = uniform_share(bwd.rule, 2);
                let g_s = ((&g_h * u)? * share)?;
                let g_u = ((&g_h * &sv.s)? * share)?;
                let g_a = act.backward(&sv.a, &sv.s, &g_s, bwd.rule)?;
                let gx = gate.backward(&sv.x, &g_a, bwd, true)?;
                Ok((gx + up.backward(&sv.x, &g_u, bwd, true)?)?)
            }
            Mlp::Plain { fc1, fc2, act } => {
                let g_s = fc2.backward(&sv.s, g_y, bwd, true)?;
                let g_a = act.backward(&sv.a, &sv.s, &g_s, bwd.rule)?;
                fc1.backward(&sv.x, &g_a, bwd, true)
            }
        }
    }

    /// Hidden width (number of neurons).
    pub fn width(&self) -> usize {
        match self {
            Mlp::Gated { up, .. } => up.out_features(),
            Mlp::Plain { fc1, .. } => fc1.out_features(),
        }
    }
}
