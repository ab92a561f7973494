//! Token embeddings, plus OPT's learned positions (offset 2) and optional input projection.

use super::Linear;
use anyhow::Result;
use candle_core::{DType, Tensor};

#[derive(Clone, Debug)]
pub struct Embeddings {
    /// `[vocab, d]`, HF name `model.embed_tokens.weight` (or the OPT equivalent).
    pub tokens: Tensor,
    pub tokens_name: String,
    /// Learned absolute positions `[max_pos + offset, hidden]` and the row offset (OPT: 2).
    pub positions: Option<(Tensor, usize)>,
    pub positions_name: Option<String>,
    /// OPT `project_in` when `word_embed_proj_dim != hidden_size`.
    pub project_in: Option<Linear>,
}

impl Embeddings {
    /// `ids`: `[B, T]` u32 → `[B, T, hidden]` f32.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.forward_at(ids, 0)
    }

    /// Embeddings of tokens at positions `start..start + T` (for cached decoding).
    pub fn forward_at(&self, ids: &Tensor, start: usize) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        // Gather rows in the storage dtype, then convert only those.
        let mut x = self
            .tokens
            .index_select(&flat, 0)?
            .to_dtype(DType::F32)?
            .reshape((b, t, self.tokens.dims()[1]))?;
        if let Some(p) = &self.project_in {
            x = p.forward(&x)?;
        }
        if let Some(pos) = self.position_embeddings(start + t)? {
            x = x.broadcast_add(&pos.narrow(0, start, t)?)?;
        }
        Ok(x)
    }

    /// The learned position rows for positions `0..t`, `[t, hidden]` (None for RoPE models).
    pub fn position_embeddings(&self, t: usize) -> Result<Option<Tensor>> {
        match &self.positions {
            None => Ok(None),
            Some((table, offset)) => Ok(Some(table.narrow(0, *offset, t)?.to_dtype(DType::F32)?)),
        }
    }

    /// Longest input the learned position table allows (None: unlimited by the table).
    pub fn max_positions(&self) -> Option<usize> {
        self.positions
            .as_ref()
            .map(|(t, off)| t.dims()[0].saturating_sub(*off))
    }
}
