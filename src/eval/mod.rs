//! Evaluation protocols (METHOD.md §4).

pub mod behaviour;
pub mod generate;
pub mod perplexity;
pub mod task;
