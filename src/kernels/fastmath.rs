//! Branch-free elementwise math that the compiler vectorizes, for the hot loops of attention
//! and the gated MLP, and `wide`, which compiles a loop for the widest vector unit present (the
//! crate itself targets baseline x86-64, whose SSE2 has 4 lanes and no `floor`).

/// Run `f` compiled for the widest vector unit of this CPU (AVX-512, else AVX2 + FMA; see
/// [`level`](super::level)): the closure inlines into a wrapper with those target features,
/// so its loops vectorize with 16 (8) lanes. Same results up to the rounding of contracted multiply-adds.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use super::Level;
        match super::level() {
            // SAFETY: `level` reports only features detected at run time.
            Level::Avx512 => return unsafe { wide512(f) },
            Level::Avx2 => return unsafe { wide256(f) },
            Level::Baseline => {}
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn wide512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wide256<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `e^x`, relative error ≈ 1e-7 over the f32 range: Cody–Waite reduction by ln 2 and a
/// degree-7 Taylor polynomial on |r| ≤ ln2/2. Inputs are clamped to the normal range
/// (results below 1.2e-38 read as that value, not 0).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_5, 88.722_8);
    // Round to nearest by adding 1.5·2²³ (no `floor`, which baseline x86-64 lacks as an
    // instruction and would call per element).
    const SHIFTER: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + SHIFTER) - SHIFTER;
    let r = x - n * 0.693_145_75;
    let r = r - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// Sum in 16 interleaved partial sums (a fixed order that vectorizes; a plain running sum is a
/// serial chain the compiler must keep scalar).
#[inline(always)]
pub fn sum16(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, v) in acc.iter_mut().zip(it.remainder()) {
        *a += v;
    }
    acc.iter().sum()
}

/// Dot product in the order of [`sum16`].
#[inline(always)]
pub fn dot16(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (mut a, mut b) = (x.chunks_exact(16), y.chunks_exact(16));
    for (c, d) in (&mut a).zip(&mut b) {
        for ((s, v), w) in acc.iter_mut().zip(c).zip(d) {
            *s += v * w;
        }
    }
    for ((s, v), w) in acc.iter_mut().zip(a.remainder()).zip(b.remainder()) {
        *s += v * w;
    }
    acc.iter().sum()
}

/// Maximum (NaN-ignoring like `f32::max`) in 16 interleaved lanes.
#[inline(always)]
pub fn max16(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    for (a, &v) in acc.iter_mut().zip(it.remainder()) {
        *a = if v > *a { v } else { *a };
    }
    acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `x · σ(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("expected a contiguous f32 tensor"),
    }
}

struct Silu;

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "fast-silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(8192)
            .zip(x.par_chunks(8192))
            .for_each(|(o, x)| {
                wide(
                    #[inline(always)]
                    || {
                        for (o, &x) in o.iter_mut().zip(x) {
                            *o = silu(x);
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fast-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, u) = (slice(s1, l1)?, slice(s2, l2)?);
        if a.len() != u.len() {
            candle_core::bail!("silu-mul: shape mismatch");
        }
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(8192)
            .zip(a.par_chunks(8192).zip(u.par_chunks(8192)))
            .for_each(|(o, (a, u))| {
                wide(
                    #[inline(always)]
                    || {
                        for ((o, &a), &u) in o.iter_mut().zip(a).zip(u) {
                            *o = silu(a) * u;
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `silu(x)` (fused, vectorized on CPU; candle's op elsewhere).
pub fn silu_t(x: &Tensor) -> anyhow::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        Ok(x.contiguous()?.apply_op1_no_bwd(&Silu)?)
    } else {
        Ok(x.silu()?)
    }
}

/// `silu(a) ⊙ u` in one pass.
pub fn silu_mul(a: &Tensor, u: &Tensor) -> anyhow::Result<Tensor> {
    if a.device().is_cpu() && a.dtype() == candle_core::DType::F32 {
        Ok(a.contiguous()?
            .apply_op2_no_bwd(&u.contiguous()?, &SiluMul)?)
    } else {
        Ok((a.silu()? * u)?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = super::exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::silu(-100.0).abs() < 1e-30);
        assert!((super::silu(2.0) - 2.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
    }
}
