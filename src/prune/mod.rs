//! Scores, masks and applying them. Nothing here knows which architecture it prunes: it works
//! on the model's list of linear layers and their names.

pub mod mask;
pub mod method;
pub mod ranking;
pub mod scores;
pub mod sparsegpt;
pub mod structured;

use crate::model::DecoderModel;
use anyhow::Result;
use candle_core::Tensor;

/// Zero the masked weights of a linear layer, in its storage dtype (others stay bit-identical).
/// Removed entries become +0.0 (a select, not a product, so no −0.0 appears).
pub fn apply_mask(weight: &Tensor, removed: &[bool]) -> Result<Tensor> {
    let m: Vec<u8> = removed.iter().map(|&r| r as u8).collect();
    let m = Tensor::from_vec(m, weight.dims(), weight.device())?;
    let zeros = weight.zeros_like()?;
    Ok(m.where_cond(&zeros, weight)?)
}

/// Fraction of zero weights per prunable layer and overall.
pub fn sparsity(model: &DecoderModel) -> Result<(Vec<(String, f64)>, f64)> {
    let mut per = Vec::new();
    let (mut z, mut n) = (0usize, 0usize);
    for l in model.linears() {
        let v = l
            .weight
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let zl = v.iter().filter(|&&x| x == 0.0).count();
        per.push((l.name.clone(), zl as f64 / v.len() as f64));
        z += zl;
        n += v.len();
    }
    Ok((per, z as f64 / n.max(1) as f64))
}
