//! Where a circuit lives: kept fraction per layer, per head (of its `o` columns) and per
//! neuron (of its `down`/`fc2` column); and the layer × component picture of it.

use crate::io::svg;
use crate::model::{Block, DecoderModel};
use crate::prune::structured::Granularity;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

type Masks = HashMap<String, Vec<bool>>;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerKept {
    pub layer: String,
    pub kept: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeadsKept {
    pub block: usize,
    /// Kept fraction of each head's `o` columns.
    pub kept: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NeuronsAlive {
    pub block: usize,
    /// Neurons keeping any weight of their `down`/`fc2` column.
    pub alive: usize,
    pub of: usize,
    /// The living neurons' indices (None when all live).
    pub indices: Option<Vec<usize>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Survivors {
    pub layers: Vec<LayerKept>,
    pub heads: Vec<HeadsKept>,
    pub neurons: Vec<NeuronsAlive>,
}

pub fn unit_word(g: Granularity) -> &'static str {
    match g {
        Granularity::Weight => "weights",
        Granularity::Neuron => "neurons",
        Granularity::Head => "heads",
    }
}

fn kept_frac(m: Option<&Vec<bool>>, idx: impl Iterator<Item = usize>) -> f64 {
    let (mut k, mut n) = (0usize, 0usize);
    for i in idx {
        n += 1;
        if !m.is_some_and(|m| m[i]) {
            k += 1;
        }
    }
    k as f64 / n.max(1) as f64
}

/// Kept fraction of each head's `o` columns in one block.
fn heads_kept(b: &Block, masks: &Masks) -> Result<Vec<f64>> {
    let o = &b.attn.o;
    let (rows, cols) = o.weight.dims2()?;
    let d = b.attn.head_dim;
    let om = masks.get(&o.name);
    Ok((0..b.attn.n_heads)
        .map(|h| {
            kept_frac(
                om,
                (0..rows).flat_map(move |r| (h * d..(h + 1) * d).map(move |c| r * cols + c)),
            )
        })
        .collect())
}

/// Whether each MLP neuron of one block keeps any weight of its `down`/`fc2` column.
fn neurons_alive(b: &Block, masks: &Masks) -> Result<Vec<bool>> {
    let (_, down) = b.neuron_layers();
    let (rows, cols) = down.weight.dims2()?;
    let dm = masks.get(&down.name);
    Ok((0..cols)
        .map(|j| kept_frac(dm, (0..rows).map(|r| r * cols + j)) > 0.0)
        .collect())
}

pub fn survivors(
    model: &DecoderModel,
    masks: &Masks,
    selected: &dyn Fn(&str) -> bool,
) -> Result<Survivors> {
    let layers = model
        .linears()
        .into_iter()
        .filter(|l| selected(&l.name))
        .map(|l| LayerKept {
            layer: l.name.clone(),
            kept: kept_frac(masks.get(&l.name), 0..l.weight.elem_count()),
        })
        .collect();
    let mut heads = Vec::new();
    let mut neurons = Vec::new();
    for (bi, b) in model.blocks.iter().enumerate() {
        heads.push(HeadsKept {
            block: bi,
            kept: heads_kept(b, masks)?,
        });
        let flags = neurons_alive(b, masks)?;
        let alive: Vec<usize> = (0..flags.len()).filter(|&j| flags[j]).collect();
        neurons.push(NeuronsAlive {
            block: bi,
            alive: alive.len(),
            of: flags.len(),
            indices: (alive.len() < flags.len()).then_some(alive),
        });
    }
    Ok(Survivors {
        layers,
        heads,
        neurons,
    })
}

/// Layer × component picture of what survives.
pub fn map_svg(
    model: &DecoderModel,
    masks: &Masks,
    g: Granularity,
    method: &str,
) -> Result<String> {
    let rows: Vec<String> = (0..model.blocks.len()).map(|i| format!("L{i}")).collect();
    let (cols, values) = match g {
        Granularity::Weight => weight_map(model, masks),
        Granularity::Head => {
            let n = model.blocks[0].attn.n_heads;
            let vals = model
                .blocks
                .iter()
                .map(|b| heads_kept(b, masks))
                .collect::<Result<_>>()?;
            ((0..n).map(|h| format!("H{h}")).collect(), vals)
        }
        Granularity::Neuron => neuron_map(model, masks)?,
    };
    let what = match g {
        Granularity::Weight => "linear",
        Granularity::Head => "head",
        Granularity::Neuron => "neuron bin",
    };
    Ok(svg::heatmap(&svg::HeatMap {
        title: &format!("{method}: fraction kept per layer and {what}"),
        rows,
        cols,
        values,
        legend: "kept",
    }))
}

type Map = (Vec<String>, Vec<Vec<f64>>);

fn weight_map(model: &DecoderModel, masks: &Masks) -> Map {
    let cols: Vec<String> = model.blocks[0]
        .linears()
        .iter()
        .map(|l| l.name.rsplit('.').next().unwrap_or(&l.name).to_string())
        .collect();
    let vals = model
        .blocks
        .iter()
        .map(|b| {
            b.linears()
                .iter()
                .map(|l| kept_frac(masks.get(&l.name), 0..l.weight.elem_count()))
                .collect()
        })
        .collect();
    (cols, vals)
}

/// Living neurons per layer, in 32 bins of neighbouring indices.
fn neuron_map(model: &DecoderModel, masks: &Masks) -> Result<Map> {
    const BINS: usize = 32;
    let vals = model
        .blocks
        .iter()
        .map(|b| {
            let alive: Vec<f64> = neurons_alive(b, masks)?
                .into_iter()
                .map(|x| x as u8 as f64)
                .collect();
            let per = alive.len().div_ceil(BINS).max(1);
            Ok(alive
                .chunks(per)
                .map(|ch| ch.iter().sum::<f64>() / ch.len() as f64)
                .collect())
        })
        .collect::<Result<_>>()?;
    Ok(((0..BINS).map(|i| format!("{i}")).collect(), vals))
}
