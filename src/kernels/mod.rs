//! CPU kernels that candle lacks or does slowly for our shapes. Each has a portable fallback
//! built from candle ops, used on other devices.

#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod fastmath;
pub mod gemm;
pub mod packed;
pub mod softmax;

pub use softmax::{causal_softmax, causal_softmax_backward};
