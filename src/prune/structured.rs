//! Structured units: MLP neurons and attention heads. A unit owns rows of the layers that
//! compute it and columns of the layer that reads it; removing it zeroes both, so it
//! contributes nothing whatever its inputs. Architecture-neutral: the layers come from the
//! block's `neuron_layers` and its attention.

use crate::model::DecoderModel;
use crate::relevance::accum::LinearAcc;
use anyhow::Result;
use candle_core::DType;
use std::collections::HashMap;

use super::scores::InputStats;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Weight,
    Neuron,
    Head,
}

impl Granularity {
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Weight => "weight",
            Granularity::Neuron => "neuron",
            Granularity::Head => "head",
        }
    }
}

/// One block's neurons or heads.
#[derive(Clone, Debug)]
pub struct UnitGroup {
    pub block: usize,
    pub count: usize,
    /// Layers whose rows belong to the units, with rows per unit (`gate`/`up`: 1; `q`: d).
    pub rows: Vec<(String, usize)>,
    /// The layer whose columns read the units, with columns per unit (`down`: 1; `o`: d).
    pub cols: (String, usize),
    /// Heads only: `k`/`v` rows per KV head and query heads per KV head; a KV head's rows go
    /// when all of its query heads do.
    pub kv: Option<(Vec<String>, usize, usize)>,
}

/// The unit groups of every block whose reading layer matches `selected`.
pub fn unit_groups(
    model: &DecoderModel,
    kind: Granularity,
    selected: impl Fn(&str) -> bool,
) -> Vec<UnitGroup> {
    let mut out = Vec::new();
    for (bi, b) in model.blocks.iter().enumerate() {
        let g = match kind {
            Granularity::Weight => continue,
            Granularity::Neuron => {
                let (rows, col) = b.neuron_layers();
                UnitGroup {
                    block: bi,
                    count: col.in_features(),
                    rows: rows.iter().map(|l| (l.name.clone(), 1)).collect(),
                    cols: (col.name.clone(), 1),
                    kv: None,
                }
            }
            Granularity::Head => {
                let a = &b.attn;
                UnitGroup {
                    block: bi,
                    count: a.n_heads,
                    rows: vec![(a.q.name.clone(), a.head_dim)],
                    cols: (a.o.name.clone(), a.head_dim),
                    kv: Some((
                        vec![a.k.name.clone(), a.v.name.clone()],
                        a.head_dim,
                        a.groups(),
                    )),
                }
            }
        };
        if selected(&g.cols.0) {
            out.push(g);
        }
    }
    out
}

/// Unit scores from relevance accumulators: the relevance reaching each unit's output columns
/// (`Σ_t x ⊙ g` of the reading layer's inputs, summed over the unit's columns; magnitudes
/// already, except under the signed aggregation, whose sign is kept).
pub fn scores_from_relevance(
    groups: &[UnitGroup],
    acc: &std::collections::BTreeMap<String, LinearAcc>,
) -> Result<Vec<Vec<f32>>> {
    groups
        .iter()
        .map(|g| {
            let Some(l) = acc.get(&g.cols.0) else {
                anyhow::bail!("no relevance for {}", g.cols.0);
            };
            Ok(l.inputs
                .chunks(g.cols.1)
                .map(|c| c.iter().sum::<f32>())
                .collect())
        })
        .collect()
}

/// Unit scores from input statistics of the reading layer. Wanda-style:
/// `‖X_unit‖₂ · ‖W[:, unit]‖_F`; activation: `Σ_{j∈unit} mean|x_j|`.
pub fn scores_from_stats(
    model: &DecoderModel,
    groups: &[UnitGroup],
    stats: &HashMap<String, InputStats>,
    wanda: bool,
) -> Result<Vec<Vec<f32>>> {
    let weights: HashMap<&str, &candle_core::Tensor> = model
        .linears()
        .into_iter()
        .map(|l| (l.name.as_str(), &l.weight))
        .collect();
    groups
        .iter()
        .map(|g| {
            let (name, per) = (&g.cols.0, g.cols.1);
            let Some(s) = stats.get(name) else {
                anyhow::bail!("no input statistics for {name}");
            };
            if !wanda {
                return Ok(s.mean_abs().chunks(per).map(|c| c.iter().sum()).collect());
            }
            let w = weights[name.as_str()].to_dtype(DType::F32)?;
            let col_sq = w.sqr()?.sum(0)?.to_vec1::<f32>()?;
            Ok(col_sq
                .chunks(per)
                .zip(s.sumsq.chunks(per))
                .map(|(w2, x2)| {
                    let w: f32 = w2.iter().sum();
                    let x: f64 = x2.iter().sum();
                    w.sqrt() * x.sqrt() as f32
                })
                .collect())
        })
        .collect()
}

/// Per-weight removal masks for removed units (`removed[g][u]`).
pub fn unit_masks(
    model: &DecoderModel,
    groups: &[UnitGroup],
    removed: &[Vec<bool>],
) -> Result<HashMap<String, Vec<bool>>> {
    let shapes: HashMap<&str, (usize, usize)> = model
        .linears()
        .into_iter()
        .map(|l| Ok((l.name.as_str(), l.weight.dims2()?)))
        .collect::<Result<_>>()?;
    let mut masks: HashMap<String, Vec<bool>> = HashMap::new();
    let mark_rows = |masks: &mut HashMap<String, Vec<bool>>,
                     name: &str,
                     per: usize,
                     which: &dyn Fn(usize) -> bool| {
        let (o, i) = shapes[name];
        let m = masks
            .entry(name.to_string())
            .or_insert_with(|| vec![false; o * i]);
        for r in 0..o {
            if which(r / per) {
                m[r * i..(r + 1) * i].iter_mut().for_each(|x| *x = true);
            }
        }
    };
    for (g, rem) in groups.iter().zip(removed) {
        for (name, per) in &g.rows {
            mark_rows(&mut masks, name, *per, &|u| rem[u]);
        }
        if let Some((kv, per, groups_per_kv)) = &g.kv {
            let kv_gone = |k: usize| {
                rem[k * groups_per_kv..(k + 1) * groups_per_kv]
                    .iter()
                    .all(|&x| x)
            };
            for name in kv {
                mark_rows(&mut masks, name, *per, &kv_gone);
            }
        }
        let (name, per) = (&g.cols.0, g.cols.1);
        let (o, i) = shapes[name.as_str()];
        let m = masks
            .entry(name.clone())
            .or_insert_with(|| vec![false; o * i]);
        for r in 0..o {
            for (c, x) in m[r * i..(r + 1) * i].iter_mut().enumerate() {
                if rem[c / per] {
                    *x = true;
                }
            }
        }
    }
    Ok(masks)
}
