//! The relevance engine: one forward pass, then a hand-written backward pass through the
//! layers' AttnLRP rules (each rule lives beside its layer's forward in `model/layers/`; what
//! the rules share is the leaf module [`crate::relevance`]), with per-weight relevance
//! accumulated on the way. No autograd graph is built.
//!
//! Memory modes: `Store` keeps every block's internals from the forward; `Recompute` keeps only
//! block inputs and recomputes a block's internals when the backward pass reaches it, so peak
//! memory is weights + accumulators + one block's activations.
//!
//! - [`pass`]: the pass itself and the per-sample drivers;
//! - [`target`]: what a pass explains;
//! - [`memory`]: the memory guard and the automatic memory mode;
//! - [`checkpoint`]: resumable runs over many samples;
//! - [`file`]: relevance files (save, load, merge).

pub mod checkpoint;
pub mod file;
pub mod head;
pub mod memory;
pub mod pass;
pub mod plan;
pub mod staged;
pub mod target;
#[cfg(test)]
mod tests;

pub use memory::{auto_mode, check_memory, memory_needed, store_bytes, MemoryMode};
pub use pass::{relevance_pass, run_one, PassResult};
pub use target::{Target, TokenSet};
