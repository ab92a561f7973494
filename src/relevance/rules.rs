//! The backward-pass context: which rule set is active and where weight relevance goes.
//!
//! Relevance is computed in the input × modified-gradient form (METHOD.md §1): an ordinary
//! backward pass in which a few local Jacobians are replaced. Each layer's file applies its own
//! rule; this module holds what they share.

use super::accum::Accumulators;
use anyhow::Result;
use candle_core::Tensor;

/// Which backward pass to run.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// AttnLRP (LXT "efficient" rules); optional ε on the linear layers.
    Lrp { epsilon: Option<f32> },
    /// The plain gradient (`W ⊙ ∇W`, the paper's gradient baseline).
    Grad,
}

impl Rule {
    pub fn is_lrp(self) -> bool {
        matches!(self, Rule::Lrp { .. })
    }

    pub fn name(self) -> &'static str {
        match self {
            Rule::Lrp { .. } => "lrp",
            Rule::Grad => "grad",
        }
    }
}

/// State threaded through a backward pass.
pub struct Bwd<'a> {
    pub rule: Rule,
    pub acc: &'a mut Accumulators,
}

/// Uniform split of an n-ary product (AttnLRP): each operand gets `1/n` of the gradient.
pub fn uniform_share(rule: Rule, n: usize) -> f64 {
    if rule.is_lrp() {
        1.0 / n as f64
    } else {
        1.0
    }
}

/// Identity rule for an elementwise nonlinearity `y = f(x)`: `g_x = g_y ⊙ y / (x + 1e-10)`,
/// so that `x ⊙ g_x = y ⊙ g_y` (relevance passes through unchanged).
pub fn identity_rule(x: &Tensor, y: &Tensor, g_y: &Tensor) -> Result<Tensor> {
    let ratio = (y / (x + 1e-10)?)?;
    Ok((g_y * ratio)?)
}

/// LRP-ε stabiliser on a linear output `z`: `g ⊙ z / (z + ε·sign z)`, sign(0) = 1.
pub fn epsilon_scale(g: &Tensor, z: &Tensor, eps: f32) -> Result<Tensor> {
    let sign = z
        .ge(0f64)?
        .to_dtype(candle_core::DType::F32)?
        .affine(2.0, -1.0)?;
    let denom = (z + (sign * eps as f64)?)?;
    Ok((g * (z / denom)?)?)
}
