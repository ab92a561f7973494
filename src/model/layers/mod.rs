//! Layer kinds shared by every architecture. Each file holds one layer's forward pass; the
//! relevance (AttnLRP) rule of that layer lives beside it.

pub mod attention;
pub mod embedding;
pub mod linear;
pub mod mlp;
pub mod norm;

pub use attention::{Attention, AttnCtx, Rope};
pub use embedding::Embeddings;
pub use linear::Linear;
pub use mlp::{Activation, Mlp};
pub use norm::Norm;

use anyhow::Result;
use candle_core::{DType, Tensor};

/// Compute copy of a stored tensor: f32 (weights may be stored in f16/bf16 to save memory).
pub(crate) fn f32_of(t: &Tensor) -> Result<std::borrow::Cow<'_, Tensor>> {
    if t.dtype() == DType::F32 {
        Ok(std::borrow::Cow::Borrowed(t))
    } else {
        Ok(std::borrow::Cow::Owned(t.to_dtype(DType::F32)?))
    }
}
