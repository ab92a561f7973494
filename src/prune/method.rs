//! The scoring methods, one vocabulary for every job; what each can do is a method of it.

use super::mask::Scope;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// AttnLRP relevance (the paper's method).
    Lrp,
    /// |W ⊙ ∇W| with the plain gradient (|x ⊙ ∇x| for units).
    Gradient,
    /// |W|·‖X_j‖₂ (Sun et al.; units: ‖X_unit‖₂·‖W[:, unit]‖_F).
    Wanda,
    /// |W|.
    Magnitude,
    /// SparseGPT: OBS reconstruction with adaptive masks per 128-column block.
    #[value(name = "sparsegpt")]
    #[serde(rename = "sparsegpt")]
    SparseGpt,
    /// |W|·mean|x_j| (units: mean |activation|).
    Activation,
}

impl Method {
    /// Methods that prune a model to a sparsity (`compress`, `sweep`).
    pub const COMPRESS: &'static [Method] = &[
        Method::Lrp,
        Method::Gradient,
        Method::Wanda,
        Method::Magnitude,
        Method::SparseGpt,
    ];
    /// Methods that rank components for a task or a behaviour (`circuit`, `correct`).
    pub const RANK: &'static [Method] = &[
        Method::Lrp,
        Method::Gradient,
        Method::Wanda,
        Method::Activation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Lrp => "lrp",
            Method::Gradient => "gradient",
            Method::Wanda => "wanda",
            Method::Magnitude => "magnitude",
            Method::SparseGpt => "sparsegpt",
            Method::Activation => "activation",
        }
    }

    pub fn can_compress(self) -> bool {
        Self::COMPRESS.contains(&self)
    }

    pub fn can_rank(self) -> bool {
        Self::RANK.contains(&self)
    }

    /// Each method's reference grouping for compression: magnitude per layer, SparseGPT per
    /// adaptive 128-column block, the others per row.
    pub fn compress_scope(self) -> Scope {
        match self {
            Method::Magnitude => Scope::Layer,
            Method::SparseGpt => Scope::Block,
            _ => Scope::Row,
        }
    }

    /// The paper's best grouping for ranking weights: Wanda per row, the others globally.
    pub fn rank_scope(self) -> Scope {
        match self {
            Method::Wanda => Scope::Row,
            _ => Scope::Global,
        }
    }

    pub fn needs_calibration(self) -> bool {
        !matches!(self, Method::Magnitude)
    }

    /// Scores come from a relevance pass (so a relevance file can stand in for it).
    pub fn is_relevance(self) -> bool {
        matches!(self, Method::Lrp | Method::Gradient)
    }

    /// Scores are made block by block while pruning (replay through the pruned blocks), so
    /// they cannot be computed once and reused.
    pub fn scores_while_pruning(self) -> bool {
        matches!(self, Method::Wanda | Method::SparseGpt)
    }

    /// The relevance rule of a relevance method.
    pub fn rule(self) -> Option<crate::relevance::rules::Rule> {
        use crate::relevance::rules::Rule;
        match self {
            Method::Lrp => Some(Rule::Lrp { epsilon: None }),
            Method::Gradient => Some(Rule::Grad),
            _ => None,
        }
    }
}
