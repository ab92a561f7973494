//! Per-weight scores: magnitude, Wanda (with calibration inputs replayed through the already
//! pruned blocks), and relevance (LRP or gradient) from a relevance file or a fresh attribution.

use super::apply_mask;
use super::mask::{self, Pattern, Scope};
use crate::fail;
use crate::lrp::file::RelevanceFile;
use crate::model::layers::Mlp;
use crate::model::DecoderModel;
use anyhow::Result;
use candle_core::{DType, Tensor, D};
use std::collections::HashMap;

/// `|W|` of a layer, row-major.
pub fn magnitude(w: &Tensor) -> Result<Vec<f32>> {
    Ok(w.to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Scores from a relevance file, checked against the model.
pub fn from_relevance(
    file: &RelevanceFile,
    model: &DecoderModel,
    config_sha256: &str,
    label: &str,
) -> Result<HashMap<String, Vec<f32>>> {
    if file.meta.config_sha256 != config_sha256 {
        fail!(
            Input,
            "{label}: scores were computed for a different model or config ({}; this model's config hash differs)",
            file.meta.model
        );
    }
    let mut out = HashMap::new();
    for lin in model.linears() {
        let key = format!("{}.weight", lin.name);
        let Some((shape, v)) = file.tensors.get(&key) else {
            fail!(Input, "{label}: no scores for {key}");
        };
        if shape.as_slice() != lin.weight.dims() {
            fail!(
                Input,
                "{label}: scores for {key} have shape {shape:?}, the weight is {:?}",
                lin.weight.dims()
            );
        }
        out.insert(lin.name.clone(), v.iter().map(|x| x.abs()).collect());
    }
    Ok(out)
}

/// Add the column sums of squares of `x` (`[.., in]`) to `acc`.
fn add_sq(acc: &mut [f64], x: &Tensor) -> Result<()> {
    let n = x.dims()[x.rank() - 1];
    let s = x.reshape(((), n))?.sqr()?.sum(0)?.to_vec1::<f32>()?;
    for (a, v) in acc.iter_mut().zip(s) {
        *a += v as f64;
    }
    Ok(())
}

/// Wanda: per block, collect ‖X_j‖₂ of every linear's input over the calibration samples with
/// the block still dense (earlier blocks already pruned), prune the block, replay the samples
/// through the pruned block to get the next block's inputs. Returns the removal masks.
pub fn wanda_prune(
    model: &mut DecoderModel,
    samples: &[Vec<u32>],
    ratio: f64,
    scope: Scope,
    pattern: Pattern,
    mut progress: impl FnMut(usize),
) -> Result<HashMap<String, Vec<bool>>> {
    let mut masks = HashMap::new();
    let mut hs = Vec::with_capacity(samples.len());
    for s in samples {
        let ids = Tensor::from_slice(s, (1, s.len()), &model.device)?;
        model.check_input(&ids)?;
        hs.push(model.embed.forward(&ids)?);
    }
    let mut ctxs: HashMap<usize, crate::model::layers::AttnCtx> = HashMap::new();
    for bi in 0..model.blocks.len() {
        let names: Vec<(String, usize)> = model.blocks[bi]
            .linears()
            .iter()
            .map(|l| (l.name.clone(), l.in_features()))
            .collect();
        let mut sq: HashMap<String, Vec<f64>> = names
            .iter()
            .map(|(n, i)| (n.clone(), vec![0.0; *i]))
            .collect();
        for h in &hs {
            let t = h.dims()[1];
            if let std::collections::hash_map::Entry::Vacant(e) = ctxs.entry(t) {
                e.insert(model.attn_ctx(t)?);
            }
            let block = &model.blocks[bi];
            let (_, saved) = block.forward_t(h, &ctxs[&t], true)?;
            let sv = saved.expect("kept");
            let a = &block.attn;
            for l in [&a.q, &a.k, &a.v] {
                add_sq(sq.get_mut(&l.name).expect("name"), &sv.attn.x)?;
            }
            add_sq(sq.get_mut(&a.o.name).expect("name"), &sv.attn.merged)?;
            match &block.mlp {
                Mlp::Gated { gate, up, down, .. } => {
                    add_sq(sq.get_mut(&gate.name).expect("name"), &sv.mlp.x)?;
                    add_sq(sq.get_mut(&up.name).expect("name"), &sv.mlp.x)?;
                    add_sq(
                        sq.get_mut(&down.name).expect("name"),
                        sv.mlp.h.as_ref().expect("gated"),
                    )?;
                }
                Mlp::Plain { fc1, fc2, .. } => {
                    add_sq(sq.get_mut(&fc1.name).expect("name"), &sv.mlp.x)?;
                    add_sq(sq.get_mut(&fc2.name).expect("name"), &sv.mlp.s)?;
                }
            }
        }
        for lin in model.blocks[bi].linears_mut() {
            let norms: Vec<f32> = sq[&lin.name].iter().map(|v| v.sqrt() as f32).collect();
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
        let block = &model.blocks[bi];
        for h in hs.iter_mut() {
            let t = h.dims()[1];
            *h = block.forward(h, &ctxs[&t])?;
        }
        progress(bi + 1);
    }
    let _ = D::Minus1;
    Ok(masks)
}
