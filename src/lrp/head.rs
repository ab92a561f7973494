//! The head's weight `[vocab, dout]` as the pass uses it: kept in its storage dtype, its f32
//! products formed a slice of the vocabulary at a time and its rows converted on demand, so a
//! pass never holds an f32 copy of the whole head (2 GiB for a 128k-vocabulary 8B model). An
//! f32 head is used as is, with the products it always had.

use crate::kernels::gemm::mm;
use crate::relevance::accum;
use anyhow::Result;
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// Vocabulary rows converted to f32 at a time.
const VOCAB_CHUNK: usize = 8192;

pub struct HeadW<'a> {
    pub w: &'a Tensor,
}

impl HeadW<'_> {
    pub fn dout(&self) -> usize {
        self.w.dims()[1]
    }

    fn is_f32(&self) -> bool {
        self.w.dtype() == DType::F32
    }

    /// Vocabulary slices `[start, len]` with their f32 weight.
    fn chunks(&self) -> impl Iterator<Item = Result<Tensor>> + '_ {
        let vocab = self.w.dims()[0];
        (0..vocab).step_by(VOCAB_CHUNK).map(move |v0| {
            let n = VOCAB_CHUNK.min(vocab - v0);
            Ok(self.w.narrow(0, v0, n)?.to_dtype(DType::F32)?)
        })
    }

    /// `o · Wᵀ`: logits `[rows, vocab]` of head inputs `o` `[rows, dout]` (f32).
    pub fn logits(&self, o: &Tensor) -> Result<Tensor> {
        if self.is_f32() {
            return mm(o, &self.w.t()?);
        }
        let parts = self
            .chunks()
            .map(|c| mm(o, &c?.t()?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// `p · W`: `[rows, dout]` for `p` `[rows, vocab]`.
    pub fn pull(&self, p: &Tensor) -> Result<Tensor> {
        if self.is_f32() {
            return mm(p, self.w);
        }
        let mut acc: Option<Tensor> = None;
        for (i, c) in self.chunks().enumerate() {
            let c = c?;
            let part = mm(&p.narrow(1, i * VOCAB_CHUNK, c.dims()[0])?, &c)?;
            acc = Some(match acc {
                None => part,
                Some(a) => (a + part)?,
            });
        }
        Ok(acc.expect("a vocabulary"))
    }

    /// Run `f` with access to the f32 rows of `tokens` (`row(tok)`).
    pub fn with_rows<R>(
        &self,
        tokens: impl IntoIterator<Item = u32>,
        f: impl for<'r> FnOnce(&'r dyn Fn(u32) -> &'r [f32]) -> R,
    ) -> Result<R> {
        let d = self.dout();
        if self.is_f32() {
            return accum::with_f32(self.w, |wv| {
                f(&|tok: u32| &wv[tok as usize * d..(tok as usize + 1) * d])
            });
        }
        let mut uniq: Vec<u32> = tokens.into_iter().collect();
        uniq.sort_unstable();
        uniq.dedup();
        let at: HashMap<u32, usize> = uniq.iter().enumerate().map(|(i, &t)| (t, i)).collect();
        let ids = Tensor::from_slice(&uniq, uniq.len(), self.w.device())?;
        let rows = self.w.index_select(&ids, 0)?.to_dtype(DType::F32)?;
        accum::with_f32(&rows, |rv| {
            f(&|tok: u32| &rv[at[&tok] * d..(at[&tok] + 1) * d])
        })
    }

    /// For head inputs `o` `[rows, d]`: the softmax over the vocabulary `p`, its
    /// log-normaliser `logsumexp` `[rows, 1]` and `p · W` `[rows, d]` (the softmax's pull on
    /// the head's input).
    pub fn softmax(&self, o: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let logits = self.logits(&o.to_dtype(DType::F32)?)?;
        let mx = logits.max_keepdim(1)?;
        let e = logits.broadcast_sub(&mx)?.exp()?;
        let s = e.sum_keepdim(1)?;
        let lse = (s.log()? + mx)?;
        let p = e.broadcast_div(&s)?;
        let gp = self.pull(&p)?;
        Ok((p, lse, gp))
    }
}
