//! Evaluation protocols (METHOD.md §4).

pub mod perplexity;
pub mod task;
