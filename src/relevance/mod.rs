//! What the model's backward rules share with the relevance pass that drives them: which rule
//! set is active and the context threaded through a backward pass ([`rules`]), and the
//! per-weight relevance accumulators the linear layers add to ([`accum`]).
//!
//! A leaf below `model`: the layers (`model/layers/`) apply these rules beside their forward
//! passes, and `lrp` runs the pass. Nothing here knows about models.

pub mod accum;
pub mod rules;

pub use accum::{Accumulators, Aggregation};
pub use rules::{Bwd, Rule};
