//! `info`: architecture, sizes and the prunable linear layers of a model.

use super::Provenance;
use crate::model::Dims;
use crate::source::Loaded;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinearInfo {
    pub name: String,
    /// `[out, in]`.
    pub shape: Vec<usize>,
    pub bias: bool,
}

/// `info --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub dims: Dims,
    pub parameters: usize,
    pub prunable_weights: usize,
    pub tied_embeddings: bool,
    /// Storage dtype on disk.
    pub disk_dtype: String,
    pub linears: Vec<LinearInfo>,
    /// The CPU matrix-product backend in use.
    pub cpu_matmul: String,
}

pub fn run(loaded: &Loaded) -> Report {
    let start = std::time::Instant::now();
    let m = &loaded.model;
    let linears: Vec<LinearInfo> = m
        .linears()
        .into_iter()
        .map(|l| LinearInfo {
            name: l.name.clone(),
            shape: l.weight.dims().to_vec(),
            bias: l.bias.is_some(),
        })
        .collect();
    Report {
        provenance: Provenance::of("info", loaded, Vec::new(), start),
        dims: m.dims.clone(),
        parameters: m.parameter_count(),
        prunable_weights: m.linears().iter().map(|l| l.weight.elem_count()).sum(),
        tied_embeddings: m.tied,
        disk_dtype: super::report::dtype_name(loaded.store.disk_dtype()).into(),
        linears,
        cpu_matmul: crate::kernels::gemm::backend().to_string(),
    }
}
