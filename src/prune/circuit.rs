//! Circuit discovery: rank components (weights, MLP neurons or attention heads) once by their
//! mean relevance for a two-choice task, then search the kept fraction: a sweep for the curve
//! and a bisection for the smallest fraction whose held-out accuracy stays at or above
//! `keep_metric` × the dense model's. What survives is the task's circuit.

use super::apply_mask;
use super::mask::{self, Scope};
use super::scores::{self, InputStats};
use super::structured::{self, Granularity, UnitGroup};
use crate::eval::task::{self, TaskMetrics};
use crate::fail;
use crate::lrp::accum::{Accumulators, Aggregation};
use crate::lrp::{self, rules::Rule, Target};
use crate::model::DecoderModel;
use crate::tasks::task::TaskPrompt;
use anyhow::Result;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitMethod {
    Lrp,
    Gradient,
    Wanda,
    Activation,
}

impl CircuitMethod {
    pub fn name(self) -> &'static str {
        match self {
            CircuitMethod::Lrp => "lrp",
            CircuitMethod::Gradient => "gradient",
            CircuitMethod::Wanda => "wanda",
            CircuitMethod::Activation => "activation",
        }
    }

    /// The paper's best grouping per method: Wanda per row, the others globally.
    pub fn default_scope(self) -> Scope {
        match self {
            CircuitMethod::Wanda => Scope::Row,
            _ => Scope::Global,
        }
    }
}

/// Components in removal order.
pub enum Ranking {
    /// Per-weight scores of the selected layers: `(name, [out, in], scores)`.
    Weights {
        scope: Scope,
        layers: Vec<(String, [usize; 2], Vec<f32>)>,
    },
    /// Unit scores per group, removed globally lowest first.
    Units {
        groups: Vec<UnitGroup>,
        scores: Vec<Vec<f32>>,
    },
}

/// A kept fraction made concrete.
pub struct Selection {
    pub masks: HashMap<String, Vec<bool>>,
    pub kept: usize,
    pub components: usize,
    /// Units only: which units are removed, per group.
    pub removed_units: Option<Vec<Vec<bool>>>,
}

impl Ranking {
    pub fn components(&self) -> usize {
        match self {
            Ranking::Weights { layers, .. } => layers.iter().map(|l| l.2.len()).sum(),
            Ranking::Units { scores, .. } => scores.iter().map(|s| s.len()).sum(),
        }
    }

    /// Keep `keep` ∈ (0, 1] of the components (at least one where possible).
    pub fn select(&self, model: &DecoderModel, keep: f64) -> Result<Selection> {
        let n = self.components();
        let kept_of = |n: usize| ((keep * n as f64).ceil() as usize).clamp(1.min(n), n);
        match self {
            Ranking::Weights { scope, layers } => {
                let masks: Vec<Vec<bool>> = match scope {
                    Scope::Global => {
                        let refs: Vec<&[f32]> = layers.iter().map(|l| l.2.as_slice()).collect();
                        mask::global_select(&refs, n - kept_of(n))
                    }
                    _ => layers
                        .iter()
                        .map(|(_, shape, s)| {
                            let cols = shape[1];
                            let ratio = (cols - kept_of(cols)) as f64 / cols as f64;
                            // layer_mask removes floor(cols·ratio); the half-weight margin keeps
                            // rounding from dropping one.
                            mask::layer_mask(
                                s,
                                *shape,
                                ratio + 0.5 / cols as f64,
                                *scope,
                                mask::Pattern::Unstructured,
                            )
                        })
                        .collect::<Result<_>>()?,
                };
                let removed: usize = masks.iter().map(|m| m.iter().filter(|&&x| x).count()).sum();
                Ok(Selection {
                    masks: layers.iter().map(|l| l.0.clone()).zip(masks).collect(),
                    kept: n - removed,
                    components: n,
                    removed_units: None,
                })
            }
            Ranking::Units { groups, scores } => {
                let mut all: Vec<(f32, usize, usize)> = Vec::with_capacity(n);
                for (g, s) in scores.iter().enumerate() {
                    all.extend(s.iter().enumerate().map(|(u, &x)| (x, g, u)));
                }
                all.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
                let remove = n - kept_of(n);
                let mut removed: Vec<Vec<bool>> =
                    scores.iter().map(|s| vec![false; s.len()]).collect();
                for &(_, g, u) in &all[..remove] {
                    removed[g][u] = true;
                }
                Ok(Selection {
                    masks: structured::unit_masks(model, groups, &removed)?,
                    kept: n - remove,
                    components: n,
                    removed_units: Some(removed),
                })
            }
        }
    }
}

/// The model with `masks` applied (removed weights set to +0.0).
pub fn pruned(model: &DecoderModel, masks: &HashMap<String, Vec<bool>>) -> Result<DecoderModel> {
    let mut m = model.clone();
    for l in m.linears_mut() {
        if let Some(mask) = masks.get(&l.name) {
            l.weight = apply_mask(&l.weight, mask)?;
        }
    }
    Ok(m)
}

/// Rank the selected components by `method` on the attribution prompts (one attribution).
pub fn rank(
    model: &DecoderModel,
    prompts: &[TaskPrompt],
    method: CircuitMethod,
    granularity: Granularity,
    scope: Scope,
    selected: &dyn Fn(&str) -> bool,
    mut progress: impl FnMut(usize, usize),
) -> Result<Ranking> {
    let n = prompts.len();
    let samples: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    enum Src {
        Rel(Accumulators),
        Stats(HashMap<String, InputStats>),
    }
    let src = match method {
        CircuitMethod::Lrp | CircuitMethod::Gradient => {
            let rule = if method == CircuitMethod::Lrp {
                Rule::Lrp { epsilon: None }
            } else {
                Rule::Grad
            };
            let mut acc = Accumulators::new(Aggregation::Abs);
            let t = samples.iter().map(|s| s.len()).max().unwrap_or(1);
            lrp::run_samples(
                model,
                &samples,
                |i| Target::LogitDiff {
                    target: prompts[i].target_id,
                    foil: prompts[i].foil_id,
                },
                rule,
                lrp::auto_mode(model, t),
                &mut acc,
                |i| progress(i, n),
            )?;
            Src::Rel(acc)
        }
        CircuitMethod::Wanda | CircuitMethod::Activation => {
            Src::Stats(scores::input_stats(model, &samples, |i| progress(i, n))?)
        }
    };
    if granularity != Granularity::Weight {
        let groups = structured::unit_groups(model, granularity, selected);
        if groups.is_empty() {
            fail!(
                Usage,
                "--layers matches none of the layers that read the model's {}s",
                granularity.name()
            );
        }
        let scores = match &src {
            Src::Rel(acc) => structured::scores_from_relevance(&groups, &acc.layers)?,
            Src::Stats(st) => {
                structured::scores_from_stats(model, &groups, st, method == CircuitMethod::Wanda)?
            }
        };
        return Ok(Ranking::Units { groups, scores });
    }
    let mut layers = Vec::new();
    for l in model.linears() {
        if !selected(&l.name) {
            continue;
        }
        let (o, i) = l.weight.dims2()?;
        let s = match &src {
            Src::Rel(acc) => match acc.layers.get(&l.name) {
                Some(a) => a.weight.iter().map(|v| v.abs()).collect(),
                None => fail!(Input, "no relevance reached {}", l.name),
            },
            Src::Stats(st) => {
                let x = if method == CircuitMethod::Wanda {
                    st[&l.name].l2()
                } else {
                    st[&l.name].mean_abs()
                };
                let w = scores::magnitude(&l.weight)?;
                w.chunks(i)
                    .flat_map(|row| row.iter().zip(&x).map(|(w, x)| w * x))
                    .collect()
            }
        };
        layers.push((l.name.clone(), [o, i], s));
    }
    if layers.is_empty() {
        fail!(Usage, "--layers matches none of the model's linear layers");
    }
    Ok(Ranking::Weights { scope, layers })
}

#[derive(Clone, Debug, serde::Serialize)]
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
