//! The memory plan of an attribution: what the run will still allocate once the model is loaded
//! (f32 accumulators for what is kept, one block's or every block's activations, a slice of the
//! head's weight in f32, the vocabulary softmax in row chunks, the f32 copy of the largest weight)
//! against the memory available; the choice of store or recompute; and, when per-weight
//! accumulators do not fit, groups of consecutive blocks accumulated one pass at a time.

use super::memory::{store_bytes, MemoryMode};
use crate::error::{self, Kind, Remedy};
use crate::model::DecoderModel;
use anyhow::Result;
use std::ops::Range;

/// Bytes of `avail` kept free of the plan: the allocator's slack, the runtime, and room for the
/// system and the page cache of the files being read and written. An eighth of what is
/// available, at most a sixteenth of the machine (a box run at 95% invites the OOM killer), and
/// at least 512 MiB.
fn reserve(avail: usize) -> usize {
    let machine = crate::util::mem_total().unwrap_or(usize::MAX) / 16;
    (avail / 8).min(machine).max(512 << 20)
}
/// Rows of the vocabulary softmax formed at a time (`pass::HEAD_ROWS`).
const HEAD_ROWS: usize = 128;

/// How a run will use memory, and why.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub mode: MemoryMode,
    /// Groups of consecutive blocks, one pass over the calibration set each.
    pub groups: Vec<Range<usize>>,
    /// The weights as loaded (their storage dtype).
    pub weights_bytes: usize,
    /// What the run allocates on top of the weights, at its peak (the largest group).
    pub run_bytes: usize,
    /// Memory available when the plan was made (None: unknown).
    pub available_bytes: Option<usize>,
    pub why: String,
}

/// What one pass allocates besides per-weight accumulators.
fn pass_bytes(model: &DecoderModel, seq_len: usize, mode: MemoryMode) -> usize {
    let d = &model.dims;
    let t = seq_len;
    let acts = match mode {
        MemoryMode::Store => store_bytes(model, t),
        // One block's internals (and their gradients), plus every block's input.
        MemoryMode::Recompute => {
            2 * store_bytes(model, t) / d.layers.max(1) + d.layers * t * d.hidden * 4
        }
    };
    let f32_copy = |n: usize, dt: candle_core::DType| {
        if dt == candle_core::DType::F32 {
            0
        } else {
            n * 4
        }
    };
    let head = &model.lm_head.weight;
    let largest = super::memory::largest_linear(model);
    let wdt = model.blocks[0].attn.q.weight.dtype();
    let softmax = t.min(HEAD_ROWS) * d.vocab * 4 * 3;
    // Per-token neuron/head sums and gradients in flight: a few [T, intermediate] tensors.
    let inputs: usize = model.linears().iter().map(|l| l.in_features() * 4).sum();
    // A non-f32 head is converted a vocabulary slice at a time (`head::HeadW`).
    let head_f32 = f32_copy(head.elem_count().min(8192 * head.dims()[1]), head.dtype());
    acts + softmax + inputs + head_f32 + f32_copy(largest, wdt) * 2
}

/// Per-weight accumulator bytes of each block.
fn block_acc_bytes(model: &DecoderModel) -> Vec<usize> {
    model
        .blocks
        .iter()
        .map(|b| {
            b.linears()
                .iter()
                .map(|l| (l.weight.elem_count() + l.out_features()) * 4)
                .sum()
        })
        .collect()
}

/// Split `n` blocks into `k` groups of consecutive blocks, as even as possible.
fn split(n: usize, k: usize) -> Vec<Range<usize>> {
    let k = k.clamp(1, n.max(1));
    (0..k).map(|i| i * n / k..(i + 1) * n / k).collect()
}

fn gib(b: usize) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// `1.3 GiB`, or `340 MiB` below a GiB.
fn size(b: usize) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", gib(b))
    } else {
        format!("{} MiB", b >> 20)
    }
}

/// Make the plan: `mode` and `passes` as asked (None: chosen here), against the memory
/// available (`avail`, None: unknown, then one pass). Refuses (exit 5) a run whose smallest
/// plan does not fit, unless `force`.
pub fn make(
    model: &DecoderModel,
    seq_len: usize,
    mode: Option<MemoryMode>,
    passes: Option<usize>,
    avail: Option<usize>,
    per_weight: bool,
    force: bool,
) -> Result<Plan> {
    let weights_bytes: usize =
        model.parameter_count() * model.blocks[0].attn.q.weight.dtype().size_in_bytes();
    let blocks = if per_weight {
        block_acc_bytes(model)
    } else {
        vec![0; model.blocks.len()]
    };
    let acc_all: usize = blocks.iter().sum();
    let reserve = avail.map_or(0, reserve);
    let budget = avail.map(|a| a.saturating_sub(reserve));
    let largest_block = blocks.iter().copied().max().unwrap_or(0);
    let groups_for = |m: MemoryMode| match (passes, budget) {
        (Some(k), _) => split(blocks.len(), k),
        (None, None) => split(blocks.len(), 1),
        (None, Some(b)) => {
            let room = b.saturating_sub(pass_bytes(model, seq_len, m));
            let per_group = (room / largest_block.max(1)).max(1);
            split(blocks.len(), blocks.len().div_ceil(per_group))
        }
    };
    // Keeping activations saves recomputing each block; worth it while they are small (at most
    // 2 GiB and an eighth of what is available) and do not cost an extra pass over the data.
    let mode = mode.unwrap_or_else(|| {
        let store = store_bytes(model, seq_len);
        let small = budget.is_none_or(|b| store <= (2usize << 30).min(b / 8));
        let no_extra =
            groups_for(MemoryMode::Store).len() <= groups_for(MemoryMode::Recompute).len();
        if small && no_extra {
            MemoryMode::Store
        } else {
            MemoryMode::Recompute
        }
    });
    let pass = pass_bytes(model, seq_len, mode);
    let groups = groups_for(mode);
    let group_acc = groups
        .iter()
        .map(|g| blocks[g.clone()].iter().sum::<usize>())
        .max()
        .unwrap_or(0);
    let run_bytes = pass + group_acc;
    let why = describe(
        mode,
        &groups,
        weights_bytes,
        pass,
        acc_all,
        group_acc,
        avail,
        passes.is_some(),
    );
    let plan = Plan {
        mode,
        groups,
        weights_bytes,
        run_bytes,
        available_bytes: avail,
        why,
    };
    if let Some(b) = budget.filter(|&b| run_bytes > b && !force) {
        let msg = format!(
            "this run needs about {} besides the loaded weights ({} for the accumulators of {} block(s) at a time, {} for the pass, {} reserve) but {} are available",
            size(run_bytes + reserve), size(group_acc), plan.groups.iter().map(|g| g.len()).max().unwrap_or(0),
            size(pass), size(reserve), size(b + reserve)
        );
        let store = mode == MemoryMode::Store;
        let one_block = pass + largest_block;
        let remedy = if passes.is_some() && one_block <= b {
            Remedy::MorePasses
        } else {
            Remedy::LessMemory { store }
        };
        return Err(error::with_remedy(Kind::Resource, msg, remedy));
    }
    Ok(plan)
}

#[allow(clippy::too_many_arguments)]
fn describe(
    mode: MemoryMode,
    groups: &[Range<usize>],
    weights: usize,
    pass: usize,
    acc_all: usize,
    group_acc: usize,
    avail: Option<usize>,
    asked: bool,
) -> String {
    let mode = match mode {
        MemoryMode::Store => "store",
        MemoryMode::Recompute => "recompute",
    };
    let avail = avail.map_or("unknown".to_string(), size);
    let split = if groups.len() == 1 {
        "one pass".to_string()
    } else {
        let why = if asked {
            "as asked"
        } else {
            "the per-weight sums do not fit at once"
        };
        format!(
            "{} passes of about {} blocks ({why})",
            groups.len(),
            groups[0].len()
        )
    };
    format!(
        "{mode} mode, {split}: weights {} loaded; accumulators {} ({} at a time), pass {}; available {avail}",
        size(weights), size(acc_all), size(group_acc), size(pass)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_consecutive_and_cover_every_block() {
        for n in [1, 5, 22, 32] {
            for k in 1..=n + 2 {
                let g = split(n, k);
                assert_eq!(g.first().unwrap().start, 0);
                assert_eq!(g.last().unwrap().end, n);
                assert!(g
                    .windows(2)
                    .all(|w| w[0].end == w[1].start && !w[1].is_empty()));
            }
        }
    }
}
