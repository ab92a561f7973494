//! WikiText-style perplexity: tokenize once without special tokens, cut non-overlapping windows
//! of `seq_len` from token 0, ppl = exp(mean NLL over every predicted token).

use crate::error::{about, Kind, Setting};
use crate::invalid;
use crate::model::DecoderModel;
use anyhow::Result;
use candle_core::Tensor;
use rayon::prelude::*;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PplResult {
    pub ppl: f64,
    pub mean_nll: f64,
    /// Tokens in the whole text.
    pub tokens: usize,
    /// Tokens that were predicted (windows × (seq_len − 1)).
    pub predicted: usize,
    pub windows: usize,
    pub available_windows: usize,
    pub seq_len: usize,
    pub per_window_nll: Vec<f64>,
    pub seconds: f64,
}

/// NLL of each next token given the logits `[T, V]` of one window (f64 accumulation).
pub fn window_nll(logits: &[f32], vocab: usize, ids: &[u32]) -> Vec<f64> {
    (0..ids.len() - 1)
        .into_par_iter()
        .map(|t| {
            let row = &logits[t * vocab..(t + 1) * vocab];
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s: f64 = row.iter().map(|&x| ((x - m) as f64).exp()).sum();
            let lse = m as f64 + s.ln();
            lse - row[ids[t + 1] as usize] as f64
        })
        .collect()
}

/// Evaluate; `progress` is called after each window.
pub fn perplexity(
    model: &DecoderModel,
    ids: &[u32],
    seq_len: usize,
    max_windows: Option<usize>,
    mut progress: impl FnMut(usize, usize),
) -> Result<PplResult> {
    if seq_len < 2 {
        invalid!(EvalSeqLen, "must be at least 2, got {seq_len}");
    }
    if seq_len > model.dims.max_positions {
        invalid!(
            EvalSeqLen,
            "{seq_len} is larger than the model allows ({} positions)",
            model.dims.max_positions
        );
    }
    let available = ids.len() / seq_len;
    if available == 0 {
        return Err(about(
            Kind::Input,
            Setting::EvalSeqLen,
            format!(
                "{seq_len}: the text has {} tokens, fewer than one window",
                ids.len()
            ),
        ));
    }
    if max_windows == Some(0) {
        invalid!(EvalWindows, "must be at least 1");
    }
    let n = max_windows.map_or(available, |m| m.min(available));
    let start = std::time::Instant::now();
    // Several windows per forward amortise per-op overhead on small models; the logits of a
    // batch stay under ~64M floats.
    let vocab = model.dims.vocab;
    let batch = ((64usize << 20) / (seq_len * vocab)).clamp(1, 16);
    let mut per_window = Vec::with_capacity(n);
    let mut w = 0;
    while w < n {
        crate::util::interrupt::check()?;
        let nb = batch.min(n - w);
        let chunk = &ids[w * seq_len..(w + nb) * seq_len];
        let input = Tensor::from_slice(chunk, (nb, seq_len), &model.device)?;
        let logits = model.forward(&input)?;
        let flat = logits.flatten_all()?.to_vec1::<f32>()?;
        for j in 0..nb {
            let win = &chunk[j * seq_len..(j + 1) * seq_len];
            let nll = window_nll(
                &flat[j * seq_len * vocab..(j + 1) * seq_len * vocab],
                vocab,
                win,
            );
            per_window.push(nll.iter().sum::<f64>() / nll.len() as f64);
        }
        w += nb;
        progress(w, n);
    }
    let mean = per_window.iter().sum::<f64>() / n as f64;
    Ok(PplResult {
        ppl: mean.exp(),
        mean_nll: mean,
        tokens: ids.len(),
        predicted: n * (seq_len - 1),
        windows: n,
        available_windows: available,
        seq_len,
        per_window_nll: per_window,
        seconds: start.elapsed().as_secs_f64(),
    })
}
