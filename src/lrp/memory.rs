//! The memory guard: estimates of an attribution's peak memory, the refusal of a run that
//! would not fit, and the automatic choice between keeping and recomputing activations.

use crate::error::{self, Kind, Remedy};
use crate::model::DecoderModel;
use anyhow::Result;

/// Whether a pass keeps every block's internals from the forward (`Store`) or only the block
/// inputs, recomputing a block's internals when the backward pass reaches it (`Recompute`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryMode {
    Store,
    Recompute,
}

/// Estimated bytes of saved activations per sample for `Store` mode (f32).
pub fn store_bytes(model: &DecoderModel, seq_len: usize) -> usize {
    let d = &model.dims;
    let t = seq_len;
    let per_block = t * d.hidden * 4 // block input, norm outputs, residual
        + t * d.heads * d.head_dim * 2 // q, merged
        + t * d.kv_heads * d.head_dim * 2 // k, v
        + d.heads * t * t // probabilities
        + t * d.intermediate * 4; // pre-activation, activation, up, product
    per_block * d.layers * 4
}

/// Elements of the largest linear weight (the one a pass converts to f32 at a time).
pub fn largest_linear(model: &DecoderModel) -> usize {
    model
        .linears()
        .iter()
        .map(|l| l.weight.elem_count())
        .max()
        .unwrap_or(0)
}

/// Estimated peak bytes of one attribution: weights (as stored, plus the f32 copy a linear
/// makes of a non-f32 weight), accumulators, saved activations (all blocks, or one block and
/// the block inputs when recomputing), logits and their gradient, and the largest per-layer
/// weight gradient.
pub fn memory_needed(
    model: &DecoderModel,
    seq_len: usize,
    mode: MemoryMode,
    per_weight: bool,
) -> usize {
    let d = &model.dims;
    let t = seq_len;
    let lin: usize = model.linears().iter().map(|l| l.weight.elem_count()).sum();
    let largest = largest_linear(model);
    let weights = model.parameter_count() * model.blocks[0].attn.q.weight.dtype().size_in_bytes();
    let acc = if per_weight { lin * 4 } else { 0 };
    let acts = match mode {
        MemoryMode::Store => store_bytes(model, t),
        MemoryMode::Recompute => {
            store_bytes(model, t) / d.layers.max(1) + d.layers * t * d.hidden * 4
        }
    };
    let logits = t * d.vocab * 4 * 3;
    weights + acc + acts + logits + largest * 4 * 2
}

/// Refuse a run that would not fit in the memory available (unless `force`), saying what lowers
/// it.
pub fn check_memory(
    model: &DecoderModel,
    seq_len: usize,
    mode: MemoryMode,
    per_weight: bool,
    force: bool,
) -> Result<()> {
    let need = memory_needed(model, seq_len, mode, per_weight);
    let Some(avail) = crate::util::mem_available() else {
        return Ok(());
    };
    if need > avail && !force {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        let msg = format!(
            "this run needs about {:.1} GiB of memory but {:.1} GiB are available",
            gib(need),
            gib(avail)
        );
        let store = mode == MemoryMode::Store;
        return Err(error::with_remedy(
            Kind::Resource,
            msg,
            Remedy::LessMemory { store },
        ));
    }
    Ok(())
}

/// Pick a memory mode: keep everything when it fits comfortably, recompute otherwise.
pub fn auto_mode(model: &DecoderModel, seq_len: usize) -> MemoryMode {
    let need = store_bytes(model, seq_len);
    let avail = crate::util::mem_available().unwrap_or(8 << 30);
    if need <= (2usize << 30).min(avail / 4) {
        MemoryMode::Store
    } else {
        MemoryMode::Recompute
    }
}
