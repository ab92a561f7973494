//! Per-weight scores: magnitude, Wanda (with calibration inputs replayed through the already
//! pruned blocks), and relevance (LRP or gradient) from a relevance file or a fresh attribution.

use super::apply_mask;
use super::mask::{self, Pattern, Scope};
use crate::fail;
use crate::lrp::file::RelevanceReader;
use crate::model::DecoderModel;
use anyhow::Result;
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// `|W|` of a layer, row-major.
pub fn magnitude(w: &Tensor) -> Result<Vec<f32>> {
    Ok(w.to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Check a relevance file against the model (its config, and a per-weight tensor of the right
/// shape for every linear layer) before any of it is read.
pub fn check_relevance(
    file: &RelevanceReader,
    model: &DecoderModel,
    config_sha256: &str,
    label: &str,
) -> Result<()> {
    if file.meta.config_sha256 != config_sha256 {
        fail!(
            Input,
            "{label}: scores were computed for a different model or config ({}; this model's config hash differs)",
            file.meta.model
        );
    }
    if let Some(g) = file.meta.units_only {
        fail!(
            Input,
            "{label}: holds only {} relevance (attributed with granularity {}); per-weight scores need granularity weight",
            g.name(),
            g.name()
        );
    }
    for lin in model.linears() {
        let key = format!("{}.weight", lin.name);
        let Some(shape) = file.shape(&key) else {
            fail!(Input, "{label}: no scores for {key}");
        };
        if shape != lin.weight.dims() {
            fail!(
                Input,
                "{label}: scores for {key} have shape {shape:?}, the weight is {:?}",
                lin.weight.dims()
            );
        }
    }
    Ok(())
}

/// One layer's scores (`|R|`) from a checked relevance file.
pub fn layer_relevance(file: &RelevanceReader, layer: &str) -> Result<Vec<f32>> {
    let mut v = file.values(&format!("{layer}.weight"))?;
    v.iter_mut().for_each(|x| *x = x.abs());
    Ok(v)
}

/// Scores of every linear layer from a relevance file, checked against the model.
pub fn from_relevance(
    file: &RelevanceReader,
    model: &DecoderModel,
    config_sha256: &str,
    label: &str,
) -> Result<HashMap<String, Vec<f32>>> {
    check_relevance(file, model, config_sha256, label)?;
    model
        .linears()
        .iter()
        .map(|lin| Ok((lin.name.clone(), layer_relevance(file, &lin.name)?)))
        .collect()
}

/// Per-input-feature statistics of a linear layer's inputs over calibration tokens.
#[derive(Clone, Debug)]
pub struct InputStats {
    /// `Σ_t x_tj²` (Wanda's ‖X_j‖₂²).
    pub sumsq: Vec<f64>,
    /// `Σ_t |x_tj|`.
    pub sumabs: Vec<f64>,
    pub tokens: usize,
    /// `XᵀX` (`[in, in]`, row-major), when asked for.
    pub gram: Option<Vec<f64>>,
}

impl InputStats {
    fn new(n: usize) -> Self {
        Self {
            sumsq: vec![0.0; n],
            sumabs: vec![0.0; n],
            tokens: 0,
            gram: None,
        }
    }

    /// Add per-column sums of squares and of absolute values over `rows` rows.
    fn add_sums(&mut self, sq: &[f32], ab: &[f32], rows: usize) {
        for ((a, b), (s, t)) in self
            .sumsq
            .iter_mut()
            .zip(self.sumabs.iter_mut())
            .zip(sq.iter().zip(ab))
        {
            *a += *s as f64;
            *b += *t as f64;
        }
        self.tokens += rows;
    }

    /// ‖X_j‖₂ per input feature.
    pub fn l2(&self) -> Vec<f32> {
        self.sumsq.iter().map(|v| v.sqrt() as f32).collect()
    }

    /// Mean |x_j| per input feature.
    pub fn mean_abs(&self) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        self.sumabs.iter().map(|v| (v / n) as f32).collect()
    }
}

/// Add one block's linear inputs (from a kept forward) to `stats`.
fn add_block_stats(
    block: &crate::model::Block,
    sv: &crate::model::BlockSaved,
    stats: &mut HashMap<String, InputStats>,
) -> Result<()> {
    // Layers reading the same input (q/k/v, gate/up) share one pass over it.
    let mut sums: HashMap<candle_core::TensorId, (Vec<f32>, Vec<f32>, usize)> = HashMap::new();
    for (lin, x) in block.linear_inputs(sv) {
        if let std::collections::hash_map::Entry::Vacant(e) = sums.entry(x.id()) {
            e.insert(column_sums(x)?);
        }
        let (sq, ab, rows) = &sums[&x.id()];
        stats
            .entry(lin.name.clone())
            .or_insert_with(|| InputStats::new(lin.in_features()))
            .add_sums(sq, ab, *rows);
    }
    Ok(())
}

/// Per-column `Σ_t x_tj²` and `Σ_t |x_tj|` in f32 over the rows of `x` (`[.., in]`), summed
/// row after row from zero (the order of candle's `sum(0)`, which the CPU path replaces: one
/// pass, no temporaries), and the row count.
fn column_sums(x: &Tensor) -> Result<(Vec<f32>, Vec<f32>, usize)> {
    let n = x.dims()[x.rank() - 1];
    let x = x.reshape(((), n))?;
    let rows = x.dims()[0];
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        let sq = x.sqr()?.sum(0)?.to_vec1::<f32>()?;
        let ab = x.abs()?.sum(0)?.to_vec1::<f32>()?;
        return Ok((sq, ab, rows));
    }
    let v = x.flatten_all()?.to_vec1::<f32>()?;
    let (mut sq, mut ab) = (vec![0f32; n], vec![0f32; n]);
    crate::kernels::fastmath::wide(|| {
        for row in v.chunks_exact(n.max(1)) {
            for ((s, a), x) in sq.iter_mut().zip(ab.iter_mut()).zip(row) {
                *s += x * x;
                *a += x.abs();
            }
        }
    });
    Ok((sq, ab, rows))
}

/// Input statistics of every linear layer of the dense model over `samples`.
pub fn input_stats(
    model: &DecoderModel,
    samples: &[Vec<u32>],
    mut progress: impl FnMut(usize),
) -> Result<HashMap<String, InputStats>> {
    let mut stats = HashMap::new();
    for (i, s) in samples.iter().enumerate() {
        crate::util::interrupt::check()?;
        let ids = Tensor::from_slice(s, (1, s.len()), &model.device)?;
        model.check_input(&ids)?;
        let ctx = model.attn_ctx(s.len())?;
        let mut h = model.embed.forward(&ids)?;
        for block in &model.blocks {
            let (y, sv) = block.forward_t(&h, &ctx, true)?;
            add_block_stats(block, &sv.expect("kept"), &mut stats)?;
            h = y;
        }
        progress(i + 1);
    }
    Ok(stats)
}

/// Block-by-block pruning with calibration replay (Wanda's and SparseGPT's protocol): for each
/// block, collect its linears' input statistics with the block still dense (earlier blocks
/// already pruned), let `prune` change the block's weights, then replay the samples through the
/// pruned block to get the next block's inputs. `gram` also collects `XᵀX` per layer.
pub fn replay_blocks(
    model: &mut DecoderModel,
    samples: &[Vec<u32>],
    gram: bool,
    mut prune: impl FnMut(&mut crate::model::Block, &HashMap<String, InputStats>) -> Result<()>,
    mut progress: impl FnMut(usize),
) -> Result<()> {
    let mut hs = Vec::with_capacity(samples.len());
    for s in samples {
        let ids = Tensor::from_slice(s, (1, s.len()), &model.device)?;
        model.check_input(&ids)?;
        hs.push(model.embed.forward(&ids)?);
    }
    let mut ctxs: HashMap<usize, crate::model::layers::AttnCtx> = HashMap::new();
    for bi in 0..model.blocks.len() {
        crate::util::interrupt::check()?;
        let mut st: HashMap<String, InputStats> = HashMap::new();
        for h in &hs {
            let t = h.dims()[1];
            if let std::collections::hash_map::Entry::Vacant(e) = ctxs.entry(t) {
                e.insert(model.attn_ctx(t)?);
            }
            let block = &model.blocks[bi];
            let (_, saved) = block.forward_t(h, &ctxs[&t], true)?;
            let sv = saved.expect("kept");
            add_block_stats(block, &sv, &mut st)?;
            if gram {
                // Layers reading the same input (q/k/v, gate/up) share one XᵀX.
                let mut done: HashMap<candle_core::TensorId, Vec<f32>> = HashMap::new();
                for (lin, x) in block.linear_inputs(&sv) {
                    let n = lin.in_features();
                    if let std::collections::hash_map::Entry::Vacant(e) = done.entry(x.id()) {
                        let x2 = x.reshape(((), n))?;
                        let g = crate::kernels::gemm::mm(&x2.t()?.contiguous()?, &x2)?;
                        e.insert(g.flatten_all()?.to_vec1::<f32>()?);
                    }
                    let gv = &done[&x.id()];
                    let e = st.get_mut(&lin.name).expect("stats added above");
                    let acc = e.gram.get_or_insert_with(|| vec![0.0; n * n]);
                    acc.iter_mut().zip(gv).for_each(|(a, v)| *a += *v as f64);
                }
            }
        }
        prune(&mut model.blocks[bi], &st)?;
        let block = &model.blocks[bi];
        for h in hs.iter_mut() {
            let t = h.dims()[1];
            *h = block.forward(h, &ctxs[&t])?;
        }
        progress(bi + 1);
    }
    Ok(())
}

/// Wanda: `|W|·‖X_j‖₂` per weight with calibration replay, pruned per row (or layer / N:M).
pub fn wanda_prune(
    model: &mut DecoderModel,
    samples: &[Vec<u32>],
    ratio: f64,
    scope: Scope,
    pattern: Pattern,
    selected: &dyn Fn(&str) -> bool,
    progress: impl FnMut(usize),
) -> Result<HashMap<String, Vec<bool>>> {
    let mut masks = HashMap::new();
    replay_blocks(
        model,
        samples,
        false,
        |block, sq| {
            for lin in block.linears_mut() {
                if !selected(&lin.name) {
                    continue;
                }
                let norms = sq[&lin.name].l2();
                let (o, i) = lin.weight.dims2()?;
                let norms_t = Tensor::from_vec(norms, (1, i), &lin.weight.device().clone())?;
                let score = lin
                    .weight
                    .to_dtype(DType::F32)?
                    .abs()?
                    .broadcast_mul(&norms_t)?;
                let score = score.flatten_all()?.to_vec1::<f32>()?;
                let m = mask::layer_mask(&score, [o, i], ratio, scope, pattern)?;
                lin.weight = apply_mask(&lin.weight, &m)?;
                masks.insert(lin.name.clone(), m);
            }
            Ok(())
        },
        progress,
    )?;
    Ok(masks)
}
