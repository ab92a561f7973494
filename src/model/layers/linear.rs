//! `y = x Wᵀ + b`, and its relevance rule: LRP-ε with ε → 0 (the plain gradient), or with an
//! explicit ε. The weight relevance `W ⊙ (g_yᵀ x)` is accumulated per sample under `name`.
//!
//! Weights are public so that pruning can replace them; `name` is the HF prefix
//! (`model.layers.3.self_attn.q_proj`), the key under which scores and masks are stored.

use super::f32_of;
use crate::kernels::gemm::mm;
use crate::relevance::rules::{epsilon_scale, Bwd, Rule};
use anyhow::Result;
use candle_core::Tensor;

#[derive(Clone, Debug)]
pub struct Linear {
    pub name: String,
    /// `[out, in]`, as in the checkpoint.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(name: impl Into<String>, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            name: name.into(),
            weight,
            bias,
        }
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x`: `[..., in]` → `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (lead, inp) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let w = f32_of(&self.weight)?;
        let x2 = x.reshape((rows, inp[0]))?;
        let mut y = mm(&x2, &w.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(f32_of(b)?.as_ref())?;
        }
        let mut out = lead.to_vec();
        out.push(self.out_features());
        Ok(y.reshape(out)?)
    }

    /// Backward from `g_y` `[B, T, out]` given the forward input `x` `[B, T, in]`; returns `g_x`.
    /// With `accumulate`, adds this layer's weight (and bias) relevance for each sample.
    pub fn backward(
        &self,
        x: &Tensor,
        g_y: &Tensor,
        bwd: &mut Bwd,
        accumulate: bool,
    ) -> Result<Tensor> {
        let g = match bwd.rule {
            Rule::Lrp { epsilon: Some(eps) } if eps > 0.0 => {
                epsilon_scale(g_y, &self.forward(x)?, eps)?
            }
            _ => g_y.clone(),
        };
        let (b, t, out) = g.dims3()?;
        let inp = self.in_features();
        let w = f32_of(&self.weight)?;
        let g2 = g.reshape((b * t, out))?;
        let g_x = mm(&g2, &w)?.reshape((b, t, inp))?;
        if accumulate && bwd.acc.enabled {
            bwd.acc.ensure(&self.name, out, inp);
            let agg = bwd.acc.aggregation;
            for s in 0..b {
                let gs = g.get(s)?; // [T, out]
                let xs = x.get(s)?.contiguous()?; // [T, in]
                if bwd.acc.per_weight {
                    // Per-token aggregations map g and x (|·| or ·²) before the sum over tokens.
                    let gm = agg.token_map(&gs)?;
                    bwd.acc.add_weight_product(
                        &self.name,
                        &self.weight,
                        &gm.t()?,
                        &agg.token_map(&xs)?,
                    )?;
                    if let Some(bias) = &self.bias {
                        bwd.acc.add_bias(&self.name, bias, &gm.sum(0)?)?;
                    }
                }
                let r_in = agg.token_sum_product(&xs, &g_x.get(s)?)?;
                bwd.acc.add_inputs(&self.name, &r_in)?;
            }
        }
        Ok(g_x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relevance::accum::{Accumulators, Aggregation};
    use crate::relevance::rules::Rule;
    use candle_core::Device;

    /// Every aggregation equals its definition summed by hand over samples and tokens:
    /// r_t[i,j] = W[i,j]·g_t[i]·x_t[j] (bias: b[i]·g_t[i]; inputs: x_t[j]·(Wᵀg_t)[j]).
    #[test]
    fn aggregations_match_their_per_token_definitions() {
        let (b, t, o, i) = (2, 5, 3, 4);
        let val =
            |n: usize, k: f32| -> Vec<f32> { (0..n).map(|v| (v as f32 * k).sin() * 1.7).collect() };
        let (wv, bv, xv, gv) = (
            val(o * i, 1.3),
            val(o, 2.1),
            val(b * t * i, 0.7),
            val(b * t * o, 0.9),
        );
        let d = Device::Cpu;
        let lin = Linear::new(
            "l",
            Tensor::from_vec(wv.clone(), (o, i), &d).unwrap(),
            Some(Tensor::from_vec(bv.clone(), o, &d).unwrap()),
        );
        let x = Tensor::from_vec(xv.clone(), (b, t, i), &d).unwrap();
        let g = Tensor::from_vec(gv.clone(), (b, t, o), &d).unwrap();
        for agg in [
            Aggregation::Abs,
            Aggregation::Signed,
            Aggregation::TokenAbs,
            Aggregation::TokenSq,
        ] {
            let mut acc = Accumulators::new(agg);
            let mut bwd = Bwd {
                rule: Rule::Grad,
                acc: &mut acc,
            };
            lin.backward(&x, &g, &mut bwd, true).unwrap();
            let l = &acc.layers["l"];
            // Per-token relevances, then the aggregation's definition.
            let fold = |per_token: &dyn Fn(usize, usize) -> f32| -> f32 {
                let mut total = 0.0;
                for s in 0..b {
                    let r: Vec<f32> = (0..t).map(|tt| per_token(s, tt)).collect();
                    total += match agg {
                        Aggregation::Abs => r.iter().sum::<f32>().abs(),
                        Aggregation::Signed => r.iter().sum(),
                        Aggregation::TokenAbs => r.iter().map(|v| v.abs()).sum(),
                        Aggregation::TokenSq => r.iter().map(|v| v * v).sum(),
                    };
                }
                total
            };
            let close = |a: f32, e: f32, what: &str| {
                assert!(
                    (a - e).abs() <= 1e-4 * e.abs().max(1.0),
                    "{agg:?} {what}: {a} vs {e}"
                );
            };
            let xs = |s: usize, tt: usize, j: usize| xv[(s * t + tt) * i + j];
            let gs = |s: usize, tt: usize, k: usize| gv[(s * t + tt) * o + k];
            for k in 0..o {
                for j in 0..i {
                    let e = fold(&|s, tt| wv[k * i + j] * gs(s, tt, k) * xs(s, tt, j));
                    close(l.weight[k * i + j], e, "weight");
                }
                let e = fold(&|s, tt| bv[k] * gs(s, tt, k));
                close(l.bias.as_ref().unwrap()[k], e, "bias");
            }
            for j in 0..i {
                let e = fold(&|s, tt| {
                    xs(s, tt, j) * (0..o).map(|k| wv[k * i + j] * gs(s, tt, k)).sum::<f32>()
                });
                close(l.inputs[j], e, "inputs");
            }
        }
    }
}
