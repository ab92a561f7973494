//! Per-weight relevance accumulators (f32) for every prunable linear layer, aggregated over
//! samples as the mean of |R| (default) or signed, or per token (`token-abs`, `token-sq`).

use crate::kernels::gemm::Fold;
use anyhow::Result;
use candle_core::Tensor;
use rayon::prelude::*;
use std::collections::BTreeMap;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Σ over samples of |R(sample)|.
    Abs,
    /// Σ over samples of R(sample).
    Signed,
    /// Σ over samples and tokens of |R(token)|: `|W| ⊙ (|G|ᵀ|X|)`, so relevance of opposite
    /// sign at different positions does not cancel. Same cost as `abs`.
    TokenAbs,
    /// Σ over samples and tokens of R(token)²: `W² ⊙ ((G²)ᵀ X²)`, the diagonal-Fisher (OBD)
    /// saliency with the modified gradient. Same cost as `abs`.
    TokenSq,
}

impl Aggregation {
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Abs => "abs",
            Aggregation::Signed => "signed",
            Aggregation::TokenAbs => "token_abs",
            Aggregation::TokenSq => "token_sq",
        }
    }

    /// Per-token map applied to `g` and `x` (and to per-token input relevance) before the sum
    /// over tokens: identity for the per-sample aggregations.
    pub fn token_map(self, t: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Aggregation::Abs | Aggregation::Signed => t.clone(),
            Aggregation::TokenAbs => t.abs()?,
            Aggregation::TokenSq => t.sqr()?,
        })
    }

    /// `Σ_t map(x_t ⊙ g_t)` over the rows of two `[T, n]` tensors: one pass, parallel over
    /// column blocks on the CPU (candle's sum over the leading axis is serial and strided).
    pub fn token_sum_product(self, x: &Tensor, g: &Tensor) -> Result<Vec<f32>> {
        let (t, n) = x.dims2()?;
        if !x.device().is_cpu() {
            return Ok(self.token_map(&(x * g)?)?.sum(0)?.to_vec1::<f32>()?);
        }
        let mut out = vec![0f32; n];
        with_f32(x, |xv| {
            with_f32(g, |gv| {
                out.par_chunks_mut(256).enumerate().for_each(|(c, o)| {
                    let c0 = c * 256;
                    crate::kernels::fastmath::wide(
                        #[inline(always)]
                        || {
                            for r in 0..t {
                                let (xr, gr) = (&xv[r * n + c0..], &gv[r * n + c0..]);
                                for ((o, &a), &b) in o.iter_mut().zip(xr).zip(gr) {
                                    let v = a * b;
                                    *o += match self {
                                        Aggregation::Abs | Aggregation::Signed => v,
                                        Aggregation::TokenAbs => v.abs(),
                                        Aggregation::TokenSq => v * v,
                                    };
                                }
                            }
                        },
                    )
                })
            })
        })??;
        Ok(out)
    }

    /// How a weight (or bias) `w` and its token-summed (mapped) gradient `g` make a sample's
    /// contribution: `|w·g|`, `w·g` or `w²·g`.
    fn weight_fold(self) -> Fold {
        match self {
            Aggregation::Abs | Aggregation::TokenAbs => Fold::Abs,
            Aggregation::Signed => Fold::Signed,
            Aggregation::TokenSq => Fold::SquareW,
        }
    }

    /// Contribution of an already token-summed (mapped) relevance.
    #[inline]
    fn fold_rel(self, r: f32) -> f32 {
        match self {
            Aggregation::Abs => r.abs(),
            _ => r,
        }
    }
}

/// Running sums for one linear layer.
#[derive(Clone, Debug)]
pub struct LinearAcc {
    pub shape: [usize; 2],
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    /// Relevance of each input feature (`Σ_t x ⊙ g_x`): the neurons of `down`/`fc2`, the
    /// head slices of `o`.
    pub inputs: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct Accumulators {
    pub aggregation: Aggregation,
    pub layers: BTreeMap<String, LinearAcc>,
    /// Samples accumulated so far.
    pub samples: usize,
    /// When false, weight relevance is not accumulated (e.g. for pure input attribution).
    pub enabled: bool,
    /// When false, only neuron/head (input-feature) relevance is accumulated: the per-weight
    /// product `gᵀx` — a third of the backward pass — is skipped (structured jobs).
    pub per_weight: bool,
    /// Only the layers of these consecutive blocks are accumulated (None: all), so that the
    /// per-weight sums of a large model can be made group by group; the pass then stops below
    /// the group's first block.
    pub blocks: Option<std::ops::Range<usize>>,
}

/// Read a contiguous f32 CPU tensor without copying.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.to_device(&candle_core::Device::Cpu)?.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
            let (a, b) = l.contiguous_offsets().expect("contiguous");
            Ok(f(&v[a..b]))
        }
        _ => anyhow::bail!("expected an f32 tensor"),
    }
}

impl Accumulators {
    pub fn new(aggregation: Aggregation) -> Self {
        Self {
            aggregation,
            layers: BTreeMap::new(),
            samples: 0,
            enabled: true,
            per_weight: true,
            blocks: None,
        }
    }

    /// Make sure a layer's entry exists (weights left empty when `per_weight` is off).
    pub fn ensure(&mut self, name: &str, out: usize, inp: usize) {
        let per_weight = self.per_weight;
        self.layers
            .entry(name.to_string())
            .or_insert_with(|| LinearAcc {
                shape: [out, inp],
                weight: if per_weight {
                    vec![0.0; out * inp]
                } else {
                    Vec::new()
                },
                bias: None,
                inputs: vec![0.0; inp],
            });
    }

    /// Add one sample's relevance `w ⊙ (gᵀ x)` for a layer (`gt`: `[out, T]`, `x`: `[T, in]`,
    /// both already token-mapped), fused into the product where the kernel can: the `[out, in]`
    /// product is then never written out (it would be written, read back once and dropped).
    pub fn add_weight_product(
        &mut self,
        name: &str,
        w: &Tensor,
        gt: &Tensor,
        x: &Tensor,
    ) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let (o, i) = w.dims2()?;
        let fold = self.aggregation.weight_fold();
        self.ensure(name, o, i);
        let acc = &mut self.layers.get_mut(name).expect("ensured").weight;
        let w32 = w.to_dtype(candle_core::DType::F32)?;
        with_f32(&w32, |wv| {
            if crate::kernels::gemm::mm_fold(gt, x, wv, acc, fold)? {
                return Ok(());
            }
            // No fused kernel: form the product, then one parallel pass.
            let grad = crate::kernels::gemm::mm(gt, x)?;
            with_f32(&grad, |gv| {
                acc.par_chunks_mut(4096)
                    .zip(wv.par_chunks(4096).zip(gv.par_chunks(4096)))
                    .for_each(|(a, (w, g))| {
                        crate::kernels::fastmath::wide(
                            #[inline(always)]
                            || {
                                for ((a, w), g) in a.iter_mut().zip(w).zip(g) {
                                    *a += fold.term(*w, *g);
                                }
                            },
                        )
                    })
            })
        })?
    }

    /// Add one sample's input-feature relevance `Σ_t map(x ⊙ g_x)` (`[in]`, from
    /// [`Aggregation::token_sum_product`]).
    pub fn add_inputs(&mut self, name: &str, rv: &[f32]) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let agg = self.aggregation;
        let Some(entry) = self.layers.get_mut(name) else {
            anyhow::bail!("input relevance for {name} before its weight relevance");
        };
        for (a, r) in entry.inputs.iter_mut().zip(rv) {
            *a += agg.fold_rel(*r);
        }
        Ok(())
    }

    /// Add one sample's bias relevance from `Σ_t map(g_t)`.
    pub fn add_bias(&mut self, name: &str, b: &Tensor, gsum: &Tensor) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let agg = self.aggregation;
        let bv = b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        let gv = gsum.to_vec1::<f32>()?;
        let Some(entry) = self.layers.get_mut(name) else {
            anyhow::bail!("bias relevance for {name} before its weight relevance");
        };
        let acc = entry.bias.get_or_insert_with(|| vec![0.0; bv.len()]);
        let fold = agg.weight_fold();
        for ((a, b), g) in acc.iter_mut().zip(&bv).zip(&gv) {
            *a += fold.term(*b, *g);
        }
        Ok(())
    }
}
