//! SparseGPT (Frantar & Alistarh, 2023), faithfully: per linear layer, the Hessian `H = XᵀX`
//! of its calibration inputs (replayed block by block through the already-pruned model), dead
//! inputs (zero diagonal) set to 1 and their weights zeroed, 1% mean-diagonal damping, the upper
//! Cholesky factor `U` of `H⁻¹`, then 128-column blocks: an adaptive mask per block (the lowest
//! `w²/U_jj²` over the block, as the reference selects it; or N:M inside it), and the OBS update
//! of the remaining weights column by column, with the block's error pushed to later columns.
//! `obs_update` keeps masks chosen by any other score and only reconstructs (`--update obs`).
//! Linear algebra in f64, parallel over rows.

use super::mask::{Pattern, Scope};
use super::scores::replay_blocks;
use crate::fail;
use crate::model::DecoderModel;
use anyhow::Result;
use candle_core::{DType, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;

pub const BLOCK: usize = 128;

/// In-place lower Cholesky factor of the symmetric positive definite `a` (`n × n`).
fn cholesky(a: &mut [f64], n: usize) -> Result<()> {
    for j in 0..n {
        let (head, tail) = a.split_at_mut((j + 1) * n);
        let rj = &mut head[j * n..(j + 1) * n];
        let d = rj[j] - rj[..j].iter().map(|x| x * x).sum::<f64>();
        if !(d > 0.0 && d.is_finite()) {
            fail!(
                Input,
                "the calibration Hessian is not positive definite (column {j})"
            );
        }
        let djj = d.sqrt();
        rj[j] = djj;
        let rj: &[f64] = rj;
        tail.par_chunks_mut(n).for_each(|ri| {
            let s: f64 = ri[..j].iter().zip(&rj[..j]).map(|(a, b)| a * b).sum();
            ri[j] = (ri[j] - s) / djj;
        });
    }
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n]
            .iter_mut()
            .for_each(|x| *x = 0.0);
    }
    Ok(())
}

/// Inverse of a lower-triangular matrix (columns solved in parallel), returned row-major.
fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let cols: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|j| {
            let mut x = vec![0.0; n];
            x[j] = 1.0 / l[j * n + j];
            for i in j + 1..n {
                let s: f64 = (j..i).map(|k| l[i * n + k] * x[k]).sum();
                x[i] = -s / l[i * n + i];
            }
            x
        })
        .collect();
    let mut m = vec![0.0; n * n];
    for (j, c) in cols.iter().enumerate() {
        for i in j..n {
            m[i * n + j] = c[i];
        }
    }
    m
}

/// Upper `U` with `UᵀU = H⁻¹`: with `P` the reversal, `PHP = L̃L̃ᵀ` gives `U = P L̃⁻¹ P`.
fn upper_chol_of_inverse(h: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut r = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            r[i * n + j] = h[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    cholesky(&mut r, n)?;
    let m = lower_inverse(&r, n);
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            u[i * n + j] = m[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    Ok(u)
}

/// How the removed weights are chosen.
pub enum Choice<'a> {
    /// SparseGPT's own selection: per 128-column block (`Scope::Row`: per row inside it).
    Adaptive {
        ratio: f64,
        scope: Scope,
    },
    NM {
        n: usize,
        m: usize,
    },
    /// A mask chosen by another score (true = removed).
    Fixed(&'a [bool]),
}

/// Prune and reconstruct one layer's weights `w` (`rows × n`, row-major) in place given the
/// Gram matrix `h` of its inputs. Returns the removal mask.
pub fn obs_layer(
    w: &mut [f64],
    h: &[f64],
    rows: usize,
    n: usize,
    choice: Choice,
) -> Result<Vec<bool>> {
    let h = dampened(w, h, rows, n);
    let u = upper_chol_of_inverse(&h, n)?;
    let mut mask = vec![false; rows * n];
    let mut i1 = 0;
    while i1 < n {
        let i2 = (i1 + BLOCK).min(n);
        block_mask(w, &u, &mut mask, rows, n, (i1, i2), &choice);
        let nm = match choice {
            Choice::NM { n, m } => Some((n, m)),
            _ => None,
        };
        obs_block(w, &u, &mut mask, n, (i1, i2), nm);
        i1 = i2;
    }
    // Removed weights are exactly zero (the OBS step sets them; dead inputs too).
    for (wv, &m) in w.iter_mut().zip(&mask) {
        if m {
            *wv = 0.0;
        }
    }
    Ok(mask)
}

/// `h` with dead inputs (zero diagonal) set to 1 and their weights zeroed, plus 1% of the mean
/// diagonal as damping.
fn dampened(w: &mut [f64], h: &[f64], rows: usize, n: usize) -> Vec<f64> {
    let mut h = h.to_vec();
    for j in 0..n {
        if h[j * n + j] == 0.0 {
            h[j * n + j] = 1.0;
            for r in 0..rows {
                w[r * n + j] = 0.0;
            }
        }
    }
    let damp = 0.01 * (0..n).map(|j| h[j * n + j]).sum::<f64>() / n as f64;
    for j in 0..n {
        h[j * n + j] += damp;
    }
    h
}

/// The mask of columns `i1..i2` (adaptive unstructured: one threshold over the block, as the
/// reference; N:M is chosen column by column in [`obs_block`]).
fn block_mask(
    w: &[f64],
    u: &[f64],
    mask: &mut [bool],
    rows: usize,
    n: usize,
    (i1, i2): (usize, usize),
    choice: &Choice,
) {
    let bs = i2 - i1;
    match choice {
        Choice::Fixed(m) => {
            for r in 0..rows {
                mask[r * n + i1..r * n + i2].copy_from_slice(&m[r * n + i1..r * n + i2]);
            }
        }
        Choice::Adaptive { ratio, scope } => {
            let score = |r: usize, j: usize| {
                let x = w[r * n + j] / u[j * n + j];
                x * x
            };
            if *scope == Scope::Row {
                let k = (bs as f64 * ratio).floor() as usize;
                for r in 0..rows {
                    let mut idx: Vec<usize> = (i1..i2).collect();
                    idx.sort_by(|&a, &b| score(r, a).total_cmp(&score(r, b)).then(a.cmp(&b)));
                    for &j in &idx[..k] {
                        mask[r * n + j] = true;
                    }
                }
            } else {
                let mut all: Vec<f64> = (0..rows)
                    .flat_map(|r| (i1..i2).map(move |j| (r, j)))
                    .map(|(r, j)| score(r, j))
                    .collect();
                let k = ((all.len() as f64) * ratio) as usize;
                if k < all.len() {
                    let (_, t, _) = all.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
                    let thresh = *t;
                    for r in 0..rows {
                        for j in i1..i2 {
                            mask[r * n + j] = score(r, j) <= thresh;
                        }
                    }
                }
            }
        }
        Choice::NM { .. } => {}
    }
}

/// Column-by-column OBS inside the block `i1..i2`, rows in parallel; then the block's error
/// goes to the later columns. With `nm`, each group of M columns picks its N first.
fn obs_block(
    w: &mut [f64],
    u: &[f64],
    mask: &mut [bool],
    n: usize,
    (i1, i2): (usize, usize),
    nm: Option<(usize, usize)>,
) {
    let bs = i2 - i1;
    w.par_chunks_mut(n)
        .zip(mask.par_chunks_mut(n))
        .for_each(|(wr, mr)| {
            let mut err = vec![0.0; bs];
            for (i, err_i) in err.iter_mut().enumerate() {
                let c = i1 + i;
                if let Some((pn, pm)) = nm {
                    if i % pm == 0 {
                        let end = (c + pm).min(i2);
                        let mut idx: Vec<usize> = (c..end).collect();
                        let sc = |j: usize| {
                            let x = wr[j] / u[j * n + j];
                            x * x
                        };
                        idx.sort_by(|&a, &b| sc(a).total_cmp(&sc(b)).then(a.cmp(&b)));
                        for &j in idx.iter().take(pn) {
                            mr[j] = true;
                        }
                    }
                }
                let d = u[c * n + c];
                let wv = wr[c];
                let q = if mr[c] { 0.0 } else { wv };
                let e = (wv - q) / d;
                let urow = &u[c * n..(c + 1) * n];
                for j in c..i2 {
                    wr[j] -= e * urow[j];
                }
                wr[c] = q;
                *err_i = e;
            }
            for j in i2..n {
                let mut s = 0.0;
                for (i, e) in err.iter().enumerate() {
                    s += e * u[(i1 + i) * n + j];
                }
                wr[j] -= s;
            }
        });
}

/// Prune (or, with `fixed`, only reconstruct) every selected linear layer block by block.
#[allow(clippy::too_many_arguments)]
pub fn prune(
    model: &mut DecoderModel,
    samples: &[Vec<u32>],
    ratio: f64,
    scope: Scope,
    pattern: Pattern,
    fixed: Option<&HashMap<String, Vec<bool>>>,
    selected: &dyn Fn(&str) -> bool,
    progress: impl FnMut(usize),
) -> Result<HashMap<String, Vec<bool>>> {
    let mut masks = HashMap::new();
    replay_blocks(
        model,
        samples,
        true,
        |block, st| {
            for lin in block.linears_mut() {
                if !selected(&lin.name) {
                    continue;
                }
                let choice = match (fixed, pattern) {
                    (Some(f), _) => match f.get(&lin.name) {
                        Some(m) => Choice::Fixed(m),
                        None => continue,
                    },
                    (None, Pattern::NM { n, m }) => Choice::NM { n, m },
                    (None, Pattern::Unstructured) => Choice::Adaptive { ratio, scope },
                };
                let (rows, n) = lin.weight.dims2()?;
                let dtype = lin.weight.dtype();
                let mut w: Vec<f64> = lin
                    .weight
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?;
                let h = st[&lin.name].gram.as_ref().expect("gram collected");
                let m = obs_layer(&mut w, h, rows, n, choice)?;
                lin.weight =
                    Tensor::from_vec(w, (rows, n), lin.weight.device())?.to_dtype(dtype)?;
                masks.insert(lin.name.clone(), m);
            }
            Ok(())
        },
        progress,
    )?;
    Ok(masks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_cholesky_of_the_inverse() {
        let n = 5;
        let mut rng = crate::util::Rng::new(3);
        let x: Vec<f64> = (0..n * 9)
            .map(|_| (rng.below(1000) as f64 / 500.0) - 1.0)
            .collect();
        let mut h = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..9).map(|t| x[t * n + i] * x[t * n + j]).sum::<f64>();
            }
            h[i * n + i] += 0.1;
        }
        let u = upper_chol_of_inverse(&h, n).unwrap();
        // (UᵀU) H = I, U upper.
        for i in 0..n {
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
        for i in 0..n {
            for j in 0..n {
                let mut s = 0.0;
                for k in 0..n {
                    let inv_ik: f64 = (0..n).map(|m| u[m * n + i] * u[m * n + k]).sum();
                    s += inv_ik * h[k * n + j];
                }
                assert!((s - (i == j) as i32 as f64).abs() < 1e-9, "{i},{j}: {s}");
            }
        }
    }

    #[test]
    fn obs_with_identity_hessian_prunes_smallest_and_keeps_the_rest() {
        // H = I: no correlation, so OBS leaves the kept weights unchanged (up to damping).
        let (rows, n) = (2, 4);
        let mut w = vec![0.1, -3.0, 2.0, 0.5, 4.0, 0.2, -0.3, 1.0];
        let mut h = vec![0.0; n * n];
        for j in 0..n {
            h[j * n + j] = 1.0;
        }
        let m = obs_layer(
            &mut w,
            &h,
            rows,
            n,
            Choice::Adaptive {
                ratio: 0.5,
                scope: Scope::Row,
            },
        )
        .unwrap();
        assert_eq!(m, vec![true, false, false, true, false, true, true, false]);
        assert_eq!(w, vec![0.0, -3.0, 2.0, 0.0, 4.0, 0.0, 0.0, 1.0]);
    }
}
