//! Circuit discovery: rank components (weights, MLP neurons or attention heads) once by their
//! mean relevance for a two-choice task, then search the kept fraction: a sweep for the curve
//! and a bisection for the smallest fraction whose held-out accuracy stays at or above
//! `keep_metric` × the dense model's. What survives is the task's circuit.

use crate::eval::task::{self, TaskMetrics};
use crate::lrp::Target;
use crate::model::DecoderModel;
use crate::prune::mask::Scope;
use crate::prune::method::Method;
use crate::prune::ranking::{pruned, rank, AttrRun, Ranking, Selection};
use crate::prune::structured::Granularity;
use crate::tasks::task::TaskPrompt;
use anyhow::Result;

/// Rank components for a task: relevance explains each attribution prompt's
/// `logit(target) − logit(foil)`.
#[allow(clippy::too_many_arguments)]
pub fn rank_task(
    model: &DecoderModel,
    prompts: &[TaskPrompt],
    method: Method,
    granularity: Granularity,
    scope: Scope,
    selected: &dyn Fn(&str) -> bool,
    run: &AttrRun,
    progress: impl FnMut(usize, usize),
) -> Result<Ranking> {
    let samples: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    rank(
        model,
        &samples,
        &|i| Target::LogitDiff {
            target: prompts[i].target_id,
            foil: prompts[i].foil_id,
        },
        crate::relevance::accum::Aggregation::Abs,
        method,
        granularity,
        scope,
        selected,
        run,
        progress,
    )
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CurvePoint {
    /// The fraction asked for (the search variable); what is kept is rounded to whole
    /// components (per row with row scope).
    pub requested: f64,
    /// Fraction of components kept.
    pub kept_fraction: f64,
    pub kept_components: usize,
    /// Fraction of the selected layers' weights kept.
    pub kept_weight_fraction: f64,
    pub accuracy: f64,
    pub logit_diff: f64,
    pub holds: bool,
}

pub struct SearchResult {
    /// Every evaluated point, by kept fraction descending.
    pub curve: Vec<CurvePoint>,
    /// The smallest kept fraction that holds.
    pub found: CurvePoint,
    pub selection: Selection,
}

fn weight_fraction(model: &DecoderModel, sel: &Selection, selected: &dyn Fn(&str) -> bool) -> f64 {
    let (mut kept, mut total) = (0usize, 0usize);
    for l in model.linears() {
        if !selected(&l.name) {
            continue;
        }
        let n = l.weight.elem_count();
        total += n;
        kept += n - sel
            .masks
            .get(&l.name)
            .map_or(0, |m| m.iter().filter(|&&x| x).count());
    }
    kept as f64 / total.max(1) as f64
}

/// Sweep and bisect the kept fraction.
pub fn search(
    model: &DecoderModel,
    ranking: &Ranking,
    eval: &[TaskPrompt],
    dense: &TaskMetrics,
    keep_metric: f64,
    selected: &dyn Fn(&str) -> bool,
    mut progress: impl FnMut(usize),
) -> Result<SearchResult> {
    let n = ranking.components();
    let need = keep_metric * dense.accuracy - 1e-12;
    let mut curve: Vec<CurvePoint> = Vec::new();
    let mut evals = 0usize;
    let mut eval_at = |keep: f64, curve: &mut Vec<CurvePoint>| -> Result<(CurvePoint, Selection)> {
        crate::util::interrupt::check()?;
        let sel = ranking.select(model, keep)?;
        let m = task::evaluate(&pruned(model, &sel.masks)?, eval)?;
        let p = CurvePoint {
            requested: keep,
            kept_fraction: sel.kept as f64 / n as f64,
            kept_components: sel.kept,
            kept_weight_fraction: weight_fraction(model, &sel, selected),
            accuracy: m.accuracy,
            logit_diff: m.logit_diff,
            holds: m.accuracy >= need,
        };
        curve.push(p.clone());
        evals += 1;
        progress(evals);
        Ok((p, sel))
    };
    const GRID: [f64; 14] = [
        0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002, 0.001, 5e-4, 2e-4, 1e-4,
    ];
    let mut last_kept = usize::MAX;
    for f in GRID {
        let kept = ((f * n as f64).ceil() as usize).max(1);
        if kept == last_kept {
            break;
        }
        last_kept = kept;
        eval_at(f, &mut curve)?;
    }
    // Bracket: the smallest passing fraction, and the largest failing one below it.
    let mut hi = curve
        .iter()
        .filter(|p| p.holds)
        .map(|p| p.requested)
        .fold(1.0f64, f64::min);
    let mut lo = curve
        .iter()
        .filter(|p| p.requested < hi)
        .map(|p| p.requested)
        .fold(0.0f64, f64::max);
    for _ in 0..10 {
        if lo <= 0.0 {
            break;
        }
        let (hi_n, lo_n) = ((hi * n as f64).round(), (lo * n as f64).round());
        if hi_n - lo_n <= 1.0 || hi / lo < 1.03 {
            break;
        }
        let mid = (hi * lo).sqrt();
        let (p, _) = eval_at(mid, &mut curve)?;
        if p.holds {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // The circuit: the smallest kept fraction that holds (the dense model if none does).
    let (found, selection) = if hi >= 1.0 {
        let sel = ranking.select(model, 1.0)?;
        let p = CurvePoint {
            requested: 1.0,
            kept_fraction: 1.0,
            kept_components: n,
            kept_weight_fraction: 1.0,
            accuracy: dense.accuracy,
            logit_diff: dense.logit_diff,
            holds: true,
        };
        (p, sel)
    } else {
        let sel = ranking.select(model, hi)?;
        let p = curve
            .iter()
            .find(|p| p.requested == hi && p.holds)
            .cloned()
            .expect("evaluated");
        (p, sel)
    };
    curve.sort_by(|a, b| b.kept_fraction.total_cmp(&a.kept_fraction));
    curve.dedup_by(|a, b| a.kept_components == b.kept_components);
    Ok(SearchResult {
        curve,
        found,
        selection,
    })
}
