//! Pruning one model to one ratio: scores → masks → pruned weights (optionally reconstructed
//! by OBS). Shared by `compress` (one ratio) and `sweep` (one scoring, many ratios).

use crate::invalid;
use crate::lrp::file::RelevanceReader;
use crate::lrp::{self, Target};
use crate::model::DecoderModel;
use crate::prune::mask::{self, Pattern, Scope};
use crate::prune::method::Method;
use crate::prune::{apply_mask, scores};
use crate::relevance::accum::{Accumulators, Aggregation};
use anyhow::Result;
use std::collections::HashMap;

pub struct CompressJob<'a> {
    pub method: Method,
    pub ratio: f64,
    pub scope: Scope,
    pub pattern: Pattern,
    /// Calibration samples (for wanda, and lrp/gradient without precomputed scores).
    pub samples: &'a [Vec<u32>],
    pub target: Target,
    /// How a fresh attribution aggregates weight relevance over tokens and samples.
    pub aggregation: Aggregation,
    /// Precomputed relevance (`--scores`), with its label.
    pub scores: Option<(&'a RelevanceReader, String)>,
    pub config_sha256: &'a str,
    /// Only layers whose name matches are pruned.
    pub layers: Option<regex::Regex>,
    /// Keep the chosen masks but reconstruct the surviving weights with SparseGPT's OBS
    /// update, block by block (`--update obs`).
    pub update_obs: bool,
    /// Checkpoints of a fresh attribution (`--checkpoint-every`, `--resume`).
    pub checkpoint: Option<crate::lrp::checkpoint::Checkpoint>,
    pub resume: bool,
    /// Run past the memory guard.
    pub force_memory: bool,
    /// Keep every layer's mask in the result (a mask is a byte per weight: 7 GB for an 8B
    /// model, so only when it is written).
    pub keep_masks: bool,
    /// Scores already computed by `scores_of` (a sweep reuses one attribution for every ratio).
    pub precomputed: Option<&'a HashMap<String, Vec<f32>>>,
}

pub struct CompressResult {
    /// The masks (true: removed), when kept (`CompressJob::keep_masks`, the OBS update, or a
    /// method that forms them all anyway).
    pub masks: HashMap<String, Vec<bool>>,
    /// Weights removed, and weights of the pruned layers.
    pub removed: (usize, usize),
    pub seconds_scores: f64,
}

/// Weights removed and weights in all, over `masks`.
fn removed(masks: &HashMap<String, Vec<bool>>) -> (usize, usize) {
    masks.values().fold((0, 0), |(z, n), m| {
        (z + m.iter().filter(|&&x| x).count(), n + m.len())
    })
}

/// Prune `model` in place.
pub fn compress(
    model: &mut DecoderModel,
    job: &CompressJob,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<CompressResult> {
    if !(job.ratio > 0.0 && job.ratio < 1.0) {
        invalid!(Ratio, "must be in (0, 1), got {}", job.ratio);
    }
    let selected = |name: &str| job.layers.as_ref().is_none_or(|r| r.is_match(name));
    if !model.linears().iter().any(|l| selected(&l.name)) {
        invalid!(Layers, "matches none of the model's linear layers");
    }
    if let Pattern::NM { n, m } = job.pattern {
        for l in model.linears() {
            if selected(&l.name) && l.in_features() % m != 0 {
                invalid!(
                    Pattern,
                    "{n}:{m} does not divide the input dimension {} of {}",
                    l.in_features(),
                    l.name
                );
            }
        }
    }
    let start = std::time::Instant::now();
    if job.scope == Scope::Block && job.method != Method::SparseGpt {
        invalid!(
            Scope,
            "block is SparseGPT's grouping; use row, layer or global"
        );
    }
    if job.method == Method::SparseGpt {
        if matches!(job.scope, Scope::Layer | Scope::Global) {
            invalid!(
                Scope,
                "{}: sparsegpt selects within 128-column blocks; use block (its default) or row",
                job.scope.name()
            );
        }
        let n = model.blocks.len();
        let masks = crate::prune::sparsegpt::prune(
            model,
            job.samples,
            job.ratio,
            job.scope,
            job.pattern,
            None,
            &selected,
            |i| progress("sparsegpt", i, n),
        )?;
        return Ok(CompressResult {
            removed: removed(&masks),
            masks,
            seconds_scores: start.elapsed().as_secs_f64(),
        });
    }
    let dense = job.update_obs.then(|| model.clone());
    let mut res = choose(model, job, &selected, start, &mut progress)?;
    if let Some(mut d) = dense {
        let n = d.blocks.len();
        let masks = crate::prune::sparsegpt::prune(
            &mut d,
            job.samples,
            job.ratio,
            job.scope,
            job.pattern,
            Some(&res.masks),
            &selected,
            |i| progress("obs update", i, n),
        )?;
        *model = d;
        res.removed = removed(&masks);
        res.masks = masks;
    }
    Ok(res)
}

/// Choose (and apply) the masks of a score-based method.
fn choose(
    model: &mut DecoderModel,
    job: &CompressJob,
    selected: &dyn Fn(&str) -> bool,
    start: std::time::Instant,
    progress: &mut impl FnMut(&str, usize, usize),
) -> Result<CompressResult> {
    if job.method == Method::Wanda {
        if job.scope == Scope::Global {
            invalid!(
                Scope,
                "global: wanda prunes block by block; use row or layer"
            );
        }
        let n = model.blocks.len();
        let masks = scores::wanda_prune(
            model,
            job.samples,
            job.ratio,
            job.scope,
            job.pattern,
            selected,
            |i| progress("wanda", i, n),
        )?;
        return Ok(CompressResult {
            removed: removed(&masks),
            masks,
            seconds_scores: start.elapsed().as_secs_f64(),
        });
    }
    let by_layer = job.scope != Scope::Global || job.pattern != Pattern::Unstructured;
    if let (Some((file, label)), None, true) = (&job.scores, job.precomputed, by_layer) {
        check_method(job, file, label)?;
        return prune_from_file(model, job, file, label, selected, start);
    }
    let owned;
    let score = match job.precomputed {
        Some(s) => s,
        None => {
            owned = scores_of(model, job, selected, progress)?;
            &owned
        }
    };
    let seconds_scores = start.elapsed().as_secs_f64();
    let mut masks = HashMap::new();
    if job.scope == Scope::Global && job.pattern == Pattern::Unstructured {
        let names: Vec<String> = model
            .linears()
            .iter()
            .filter(|l| selected(&l.name))
            .map(|l| l.name.clone())
            .collect();
        let slices: Vec<&[f32]> = names.iter().map(|n| score[n].as_slice()).collect();
        for (n, m) in names.iter().zip(mask::global_masks(&slices, job.ratio)) {
            masks.insert(n.clone(), m);
        }
    } else {
        for l in model.linears() {
            if !selected(&l.name) {
                continue;
            }
            let (o, i) = l.weight.dims2()?;
            masks.insert(
                l.name.clone(),
                mask::layer_mask(&score[&l.name], [o, i], job.ratio, job.scope, job.pattern)?,
            );
        }
    }
    for l in model.linears_mut() {
        if let Some(m) = masks.get(&l.name) {
            l.weight = apply_mask(&l.weight, m)?;
        }
    }
    Ok(CompressResult {
        removed: removed(&masks),
        masks,
        seconds_scores,
    })
}

/// Per-weight scores of the selected layers for the score-based methods (magnitude, LRP,
/// gradient; Wanda and SparseGPT score block by block while they prune).
pub fn scores_of(
    model: &DecoderModel,
    job: &CompressJob,
    selected: &dyn Fn(&str) -> bool,
    progress: &mut impl FnMut(&str, usize, usize),
) -> Result<HashMap<String, Vec<f32>>> {
    Ok(match job.method {
        Method::Magnitude => model
            .linears()
            .into_iter()
            .filter(|l| selected(&l.name))
            .map(|l| Ok((l.name.clone(), scores::magnitude(&l.weight)?)))
            .collect::<Result<_>>()?,
        Method::Lrp | Method::Gradient => match &job.scores {
            Some((file, label)) => {
                check_method(job, file, label)?;
                scores::from_relevance(file, model, job.config_sha256, label)?
            }
            None => {
                let rule = job.method.rule().expect("a relevance method");
                let mut acc = Accumulators::new(job.aggregation);
                let t = job.samples.first().map_or(0, |s| s.len());
                let mode = lrp::auto_mode(model, t);
                lrp::check_memory(model, t, mode, true, job.force_memory)?;
                let total = job.samples.len();
                lrp::checkpoint::run_samples_resumable(
                    model,
                    job.samples,
                    |_| job.target.clone(),
                    rule,
                    mode,
                    &mut acc,
                    job.checkpoint.as_ref(),
                    job.resume,
                    |i| progress("attribute", i, total),
                )?;
                acc.layers.into_iter().map(|(k, v)| (k, v.weight)).collect()
            }
        },
        Method::Wanda | Method::SparseGpt | Method::Activation => {
            anyhow::bail!("{} has no per-weight scores to reuse", job.method.name())
        }
    })
}

/// A relevance file must hold the rule of the method (`lrp` or `grad`).
fn check_method(job: &CompressJob, file: &RelevanceReader, label: &str) -> Result<()> {
    let expected = if job.method == Method::Lrp {
        "lrp"
    } else {
        "grad"
    };
    if file.meta.rule != expected {
        invalid!(
            Method,
            "{}: {label} holds '{}' relevance but this method needs '{expected}'",
            job.method.name(),
            file.meta.rule
        );
    }
    Ok(())
}

/// Masks chosen layer by layer from a relevance file (row or layer scope, or N:M), each
/// layer's scores read, used and dropped in turn: a large model's relevance is never in memory
/// at once.
fn prune_from_file(
    model: &mut DecoderModel,
    job: &CompressJob,
    file: &RelevanceReader,
    label: &str,
    selected: &dyn Fn(&str) -> bool,
    start: std::time::Instant,
) -> Result<CompressResult> {
    scores::check_relevance(file, model, job.config_sha256, label)?;
    let keep = job.keep_masks || job.update_obs;
    let (mut masks, mut counts) = (HashMap::new(), (0, 0));
    for l in model.linears_mut() {
        if !selected(&l.name) {
            continue;
        }
        crate::util::interrupt::check()?;
        let (o, i) = l.weight.dims2()?;
        let score = scores::layer_relevance(file, &l.name)?;
        let m = mask::layer_mask(&score, [o, i], job.ratio, job.scope, job.pattern)?;
        l.weight = apply_mask(&l.weight, &m)?;
        counts.0 += m.iter().filter(|&&x| x).count();
        counts.1 += m.len();
        if keep {
            masks.insert(l.name.clone(), m);
        }
    }
    Ok(CompressResult {
        masks,
        removed: counts,
        seconds_scores: start.elapsed().as_secs_f64(),
    })
}
