//! CPU kernels that candle lacks or does slowly for our shapes. Each has a portable fallback
//! built from candle ops, used on other devices.

#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod fastmath;
pub mod gemm;
pub mod packed;
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
