//! Ranking components (weights, MLP neurons, attention heads) by a score — relevance (LRP or
//! gradient) of any target, or activation statistics (Wanda, activation) — and turning a kept
//! fraction or a removal count into masks. Shared by circuits and correction.

use super::apply_mask;
use super::mask::{self, Scope};
use super::scores::{self, InputStats};
use super::structured::{self, Granularity, UnitGroup};
use crate::lrp::{self, Target};
use crate::model::DecoderModel;
use crate::relevance::accum::{Accumulators, Aggregation};
use crate::{fail, invalid};
use anyhow::Result;
use std::collections::HashMap;

pub use super::method::Method;

/// Components in removal order.
#[derive(Clone)]
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
        let kept_of = |n: usize| ((keep * n as f64).ceil() as usize).clamp(1.min(n), n);
        match self {
            Ranking::Weights { scope, layers } if *scope != Scope::Global => {
                let n = self.components();
                let masks: Vec<Vec<bool>> = layers
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
                    .collect::<Result<_>>()?;
                let removed: usize = masks.iter().map(|m| m.iter().filter(|&&x| x).count()).sum();
                Ok(Selection {
                    masks: layers.iter().map(|l| l.0.clone()).zip(masks).collect(),
                    kept: n - removed,
                    components: n,
                    removed_units: None,
                })
            }
            _ => {
                let n = self.components();
                self.remove_lowest(model, n - kept_of(n))
            }
        }
    }

    /// Remove exactly the `k` lowest-scoring components over all groups (global order; ties:
    /// earlier layer, then lower index, first).
    pub fn remove_lowest(&self, model: &DecoderModel, k: usize) -> Result<Selection> {
        let n = self.components();
        if k > n {
            fail!(Usage, "cannot remove {k} components: there are only {n}");
        }
        match self {
            Ranking::Weights { layers, .. } => {
                let refs: Vec<&[f32]> = layers.iter().map(|l| l.2.as_slice()).collect();
                let masks = mask::global_select(&refs, k);
                Ok(Selection {
                    masks: layers.iter().map(|l| l.0.clone()).zip(masks).collect(),
                    kept: n - k,
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
                let mut removed: Vec<Vec<bool>> =
                    scores.iter().map(|s| vec![false; s.len()]).collect();
                for &(_, g, u) in &all[..k] {
                    removed[g][u] = true;
                }
                Ok(Selection {
                    masks: structured::unit_masks(model, groups, &removed)?,
                    kept: n - k,
                    components: n,
                    removed_units: Some(removed),
                })
            }
        }
    }

    fn scores(&self) -> Vec<&Vec<f32>> {
        match self {
            Ranking::Weights { layers, .. } => layers.iter().map(|l| &l.2).collect(),
            Ranking::Units { scores, .. } => scores.iter().collect(),
        }
    }

    fn scores_mut(&mut self) -> Vec<&mut Vec<f32>> {
        match self {
            Ranking::Weights { layers, .. } => layers.iter_mut().map(|l| &mut l.2).collect(),
            Ranking::Units { scores, .. } => scores.iter_mut().collect(),
        }
    }

    /// Contrast two rankings for correction (METHOD.md §3): each set's scores are normalised by
    /// their total magnitude (shares `g`, `u`; a signed `u` stays signed) so the two are on one
    /// scale, then combined by `criterion`
    /// into one global order whose lowest components go first. Always one global order.
    /// Borrows both so that one attribution serves several criteria without copying them.
    /// `smoothing`: the ratio's δ as a fraction of the mean share ([`RATIO_SMOOTHING`]).
    pub fn contrast(
        general: &Ranking,
        undesired: &Ranking,
        criterion: Criterion,
        smoothing: f64,
    ) -> Result<Ranking> {
        let total = |r: &Ranking| -> f64 {
            r.scores()
                .iter()
                .map(|s| s.iter().map(|&x| (x as f64).abs()).sum::<f64>())
                .sum()
        };
        let (tg, tu) = (total(general), total(undesired));
        if !(tg > 0.0 && tu > 0.0) {
            fail!(
                Input,
                "no relevance reached the scored components (totals {tg}, {tu})"
            );
        }
        // Ratio smoothing (default a tenth of the mean share), so components that are
        // negligible on both sets do not rank as "specific" through noise.
        let delta = smoothing / general.components().max(1) as f64;
        let mut out = general.clone();
        {
            let u = undesired.scores();
            let g = out.scores_mut();
            if u.len() != g.len() {
                anyhow::bail!("rankings of different shapes");
            }
            for (gs, us) in g.into_iter().zip(u) {
                for (a, b) in gs.iter_mut().zip(us.iter()) {
                    let (sg, su) = (*a as f64 / tg, *b as f64 / tu);
                    *a = match criterion {
                        Criterion::Difference => (sg - su) as f32,
                        Criterion::Ratio => (-su / (sg + delta)) as f32,
                    };
                }
            }
        }
        if let Ranking::Weights { scope, .. } = &mut out {
            *scope = Scope::Global;
        }
        Ok(out)
    }
}

/// Default δ of the ratio criterion, as a fraction of the mean general share: smaller favours
/// components general text barely uses (less perplexity per component, less effect), larger
/// favours a large undesired share.
pub const RATIO_SMOOTHING: f64 = 0.1;

/// How correction combines the general share `g` and the undesired share `u` of a component.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// `g − u`, lowest first (the paper's): favours components with a large absolute share of
    /// the undesired relevance, which on some models are the ones general text needs most.
    Difference,
    /// `u / (g + δ)`, highest first: how specific a component is to the undesired set.
    Ratio,
}

impl Criterion {
    pub fn name(self) -> &'static str {
        match self {
            Criterion::Difference => "difference",
            Criterion::Ratio => "ratio",
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

/// How a job's attribution runs: checkpoints (`--checkpoint-every`, `--resume`) and the memory
/// guard (`--force`).
#[derive(Clone, Debug, Default)]
pub struct AttrRun {
    pub checkpoint: Option<lrp::checkpoint::Checkpoint>,
    pub resume: bool,
    pub force_memory: bool,
}

/// Rank the selected components by `method` over `samples` (one attribution; `target` says
/// what relevance explains for each sample, `aggregation` how samples and tokens are summed:
/// `Signed` keeps the sign in the scores, the others are magnitudes).
#[allow(clippy::too_many_arguments)]
pub fn rank(
    model: &DecoderModel,
    samples: &[Vec<u32>],
    target: &dyn Fn(usize) -> Target,
    aggregation: Aggregation,
    method: Method,
    granularity: Granularity,
    scope: Scope,
    selected: &dyn Fn(&str) -> bool,
    run: &AttrRun,
    mut progress: impl FnMut(usize, usize),
) -> Result<Ranking> {
    let n = samples.len();
    enum Src {
        Rel(Accumulators),
        Stats(HashMap<String, InputStats>),
    }
    let src = match method {
        Method::Lrp | Method::Gradient => {
            let rule = method.rule().expect("a relevance method");
            let mut acc = Accumulators::new(aggregation);
            // Units need only the relevance reaching them, not every weight's.
            acc.per_weight = granularity == Granularity::Weight;
            let t = samples.iter().map(|s| s.len()).max().unwrap_or(1);
            let mode = lrp::auto_mode(model, t);
            lrp::check_memory(model, t, mode, acc.per_weight, run.force_memory)?;
            lrp::checkpoint::run_samples_resumable(
                model,
                samples,
                target,
                rule,
                mode,
                &mut acc,
                run.checkpoint.as_ref(),
                run.resume,
                |i| progress(i, n),
            )?;
            Src::Rel(acc)
        }
        Method::Wanda | Method::Activation => {
            Src::Stats(scores::input_stats(model, samples, |i| progress(i, n))?)
        }
        Method::Magnitude | Method::SparseGpt => {
            invalid!(Method, "{} does not rank components", method.name())
        }
    };
    if granularity != Granularity::Weight {
        let groups = structured::unit_groups(model, granularity, selected);
        if groups.is_empty() {
            invalid!(
                Layers,
                "matches none of the layers that read the model's {}s",
                granularity.name()
            );
        }
        let scores = match &src {
            Src::Rel(acc) => structured::scores_from_relevance(&groups, &acc.layers)?,
            Src::Stats(st) => {
                structured::scores_from_stats(model, &groups, st, method == Method::Wanda)?
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
                Some(a) if aggregation == Aggregation::Signed => a.weight.clone(),
                Some(a) => a.weight.iter().map(|v| v.abs()).collect(),
                None => fail!(Input, "no relevance reached {}", l.name),
            },
            Src::Stats(st) => {
                let x = if method == Method::Wanda {
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
        invalid!(Layers, "matches none of the model's linear layers");
    }
    Ok(Ranking::Weights { scope, layers })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(scores: Vec<Vec<f32>>) -> Ranking {
        let groups = scores
            .iter()
            .enumerate()
            .map(|(b, s)| UnitGroup {
                block: b,
                count: s.len(),
                rows: vec![],
                cols: (format!("b{b}"), 1),
                kv: None,
            })
            .collect();
        Ranking::Units { groups, scores }
    }

    fn order(r: &Ranking) -> Vec<(usize, usize)> {
        let Ranking::Units { scores, .. } = r else {
            unreachable!()
        };
        let mut all: Vec<(f32, usize, usize)> = scores
            .iter()
            .enumerate()
            .flat_map(|(g, s)| s.iter().enumerate().map(move |(u, &x)| (x, g, u)))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        all.into_iter().map(|(_, g, u)| (g, u)).collect()
    }

    #[test]
    fn criteria_order_components_as_documented() {
        // Shares (general, undesired): a big component used by both sets (0.5, 0.6), a
        // specific one (0.01, 0.2), a general-only one (0.29, 0.0), a dead one (0, 0), and
        // a half-specific one (0.2, 0.2).
        let g = units(vec![vec![0.5, 0.01, 0.29], vec![0.0, 0.2]]);
        let u = units(vec![vec![0.6, 0.2, 0.0], vec![0.0, 0.2]]);
        // Difference: g − u = −0.1, −0.19, 0.29, 0, 0 → specific, big, (dead, half), general.
        let d = Ranking::contrast(&g, &u, Criterion::Difference, RATIO_SMOOTHING).unwrap();
        let od = order(&d);
        assert_eq!((&od[..2], od[4]), (&[(0, 1), (0, 0)][..], (0, 2)));
        // Ratio: u/(g+δ), δ = 0.1/5 = 0.02: 1.15, 6.67, 0, 0, 0.91 → specific, big, half.
        let r = Ranking::contrast(&g, &u, Criterion::Ratio, RATIO_SMOOTHING).unwrap();
        assert_eq!(&order(&r)[..3], &[(0, 1), (0, 0), (1, 1)]);
        // Totals are normalised: scaling one set changes nothing.
        let u10 = units(vec![vec![6.0, 2.0, 0.0], vec![0.0, 2.0]]);
        let r10 = Ranking::contrast(&g, &u10, Criterion::Ratio, RATIO_SMOOTHING).unwrap();
        assert_eq!(order(&r10), order(&r));
        // Smoothing decides between "big" (0.6 of the behaviour, 0.5 of general text) and a
        // near-unused one (0.01, 0.2): δ = 10/5 = 2 ranks big first (0.6/2.5 > 0.2/2.01).
        let r_big = Ranking::contrast(&g, &u, Criterion::Ratio, 10.0).unwrap();
        assert_eq!(&order(&r_big)[..2], &[(0, 0), (0, 1)]);
        // Nothing reached the components: a clear error.
        let z = units(vec![vec![0.0, 0.0]]);
        assert!(Ranking::contrast(&z, &z, Criterion::Ratio, RATIO_SMOOTHING).is_err());
    }

    #[test]
    fn signed_undesired_scores_keep_their_sign() {
        // Undesired side signed (`--objective logprob`): a component whose removal would raise
        // the behaviour (negative) goes last under both criteria, however specific; totals are
        // magnitudes, so the opposite signs do not cancel into an error.
        let g = units(vec![vec![0.25, 0.25, 0.25, 0.25]]);
        let u = units(vec![vec![2.0, -3.0, 0.5, 0.0]]);
        for c in [Criterion::Difference, Criterion::Ratio] {
            let r = Ranking::contrast(&g, &u, c, RATIO_SMOOTHING).unwrap();
            assert_eq!(order(&r), [(0, 0), (0, 2), (0, 3), (0, 1)], "{c:?}");
        }
        let cancel = units(vec![vec![1.0, -1.0, 0.0, 0.0]]);
        assert!(Ranking::contrast(&g, &cancel, Criterion::Ratio, RATIO_SMOOTHING).is_ok());
    }
}
