//! sparc3: attribution-guided pruning of large language models (AttnLRP).
//!
//! Data flows one way: `source` (resolve and load a model) → `model` (architectures on shared
//! layers) → relevance → scores → masks → output. `cli` only parses flags and prints.

pub mod cli;
pub mod data;
pub mod error;
pub mod eval;
pub mod io;
pub mod jobs;
pub mod kernels;
pub mod lrp;
pub mod model;
pub mod prune;
pub mod relevance;
pub mod source;
pub mod tasks;
pub mod util;
