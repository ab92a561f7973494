//! Feed-forward blocks: gated (Llama SwiGLU: `down(act(gate x) ⊙ up x)`) and plain
//! (OPT: `fc2(act(fc1 x))`).

use super::Linear;
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
            other => bail!("activation '{other}' is not supported (supported: silu, relu, gelu, gelu_new)"),
        })
    }

    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Silu => x.silu()?,
            Activation::Relu => x.relu()?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::GeluTanh => x.gelu()?,
        })
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

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Mlp::Gated { gate, up, down, act } => {
                let h = (act.forward(&gate.forward(x)?)? * up.forward(x)?)?;
                down.forward(&h)
            }
            Mlp::Plain { fc1, fc2, act } => fc2.forward(&act.forward(&fc1.forward(x)?)?),
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
