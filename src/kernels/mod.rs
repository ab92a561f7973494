//! CPU kernels that candle lacks or does slowly for our shapes. Each has a portable fallback
//! built from candle ops, used on other devices.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod fastmath;
pub mod gemm;
pub mod packed;
pub mod portable;
pub mod softmax;

pub use softmax::{causal_softmax, causal_softmax_backward};

/// Run `f` on a worker thread of rayon's pool. The matrix products inside start their parallel
/// parts with `rayon::scope`; called from outside the pool, each such scope parks the calling
/// thread and wakes it again, a few hundred times per forward pass. From a worker the caller
/// takes part in the work instead (measured 5–10% of an attribution at 128 tokens on 2 cores).
/// Other devices run `f` where they are (their work is queued, not threaded).
pub fn on_workers<R: Send>(device: &candle_core::Device, f: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu() {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// The widest x86 vector extension the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// What the target guarantees (SSE2 on x86-64; NEON on aarch64).
    Baseline,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F (BW, DQ, VL for the elementwise loops).
    Avx512,
}

/// What this CPU has, lowered by `SPARC3_GEMM=avx2` or `=portable` so that one machine can be
/// measured as the smaller one (the matrix kernel and the elementwise loops alike).
pub fn level() -> Level {
    static L: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *L.get_or_init(|| {
        let cap = match std::env::var("SPARC3_GEMM").as_deref() {
            Ok("avx2") => Level::Avx2,
            Ok("portable") => Level::Baseline,
            _ => Level::Avx512,
        };
        detected().min(cap)
    })
}

fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            return Level::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}
