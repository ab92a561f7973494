//! Batched text generation with key/value caches: greedy or temperature sampling. Prompts of
//! equal length decode together (no padding, so batching never changes a result), and every
//! (prompt, sample) pair draws from its own seeded stream, so outputs do not depend on the
//! batch size or thread count.

use crate::model::DecoderModel;
use crate::util::Rng;
use anyhow::Result;
use candle_core::Tensor;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct GenConfig {
    pub new_tokens: usize,
    /// Samples per prompt.
    pub samples: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub seed: u64,
}

/// Upper bound on sequences decoded together (memory: caches and `[B, vocab]` logits).
const MAX_BATCH: usize = 256;

fn pick(logits: &[f32], temperature: f64, rng: &mut Rng) -> u32 {
    if temperature <= 0.0 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = logits
        .iter()
        .map(|&v| ((v as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    // 53 random bits → uniform in [0, 1).
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    let mut acc = 0.0;
    for (i, x) in w.iter().enumerate() {
        acc += x;
        if u < acc {
            return i as u32;
        }
    }
    (w.len() - 1) as u32
}

/// Continue every prompt: `out[prompt][sample]` holds `new_tokens` generated token ids.
pub fn generate(
    model: &DecoderModel,
    prompts: &[Vec<u32>],
    cfg: &GenConfig,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<Vec<u32>>>> {
    let mut out: Vec<Vec<Vec<u32>>> = vec![vec![Vec::new(); cfg.samples]; prompts.len()];
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        by_len.entry(p.len()).or_default().push(i);
    }
    let per_batch = (MAX_BATCH / cfg.samples.max(1)).max(1);
    let mut done = 0;
    for (t, idx) in by_len {
        if t + cfg.new_tokens > model.dims.max_positions {
            crate::fail!(
                Input,
                "a prompt of {t} tokens plus {} new tokens is longer than the model allows ({} positions)",
                cfg.new_tokens,
                model.dims.max_positions
            );
        }
        for chunk in idx.chunks(per_batch) {
            let mut ids = Vec::with_capacity(chunk.len() * t);
            for &i in chunk {
                ids.extend_from_slice(&prompts[i]);
            }
            let ids = Tensor::from_vec(ids, (chunk.len(), t), &model.device)?;
            let (mut logits, mut caches) = model.prefill(&ids)?;
            // Each prompt's cache repeated once per sample.
            let k = cfg.samples;
            if k > 1 {
                let rep: Vec<u32> = (0..chunk.len() as u32)
                    .flat_map(|i| std::iter::repeat_n(i, k))
                    .collect();
                let rep = Tensor::from_vec(rep, chunk.len() * k, &model.device)?;
                logits = logits.index_select(&rep, 0)?;
                for c in caches.iter_mut() {
                    c.k = c.k.index_select(&rep, 0)?;
                    c.v = c.v.index_select(&rep, 0)?;
                }
            }
            let mut rngs: Vec<Rng> = chunk
                .iter()
                .flat_map(|&i| {
                    (0..k).map(move |s| {
                        Rng::new(cfg.seed ^ ((i as u64) << 20) ^ (s as u64).wrapping_mul(0x9E37))
                    })
                })
                .collect();
            let mut seqs: Vec<Vec<u32>> = vec![Vec::with_capacity(cfg.new_tokens); chunk.len() * k];
            for step in 0..cfg.new_tokens {
                crate::util::interrupt::check()?;
                let rows = logits.to_vec2::<f32>()?;
                let next: Vec<u32> = rows
                    .iter()
                    .zip(rngs.iter_mut())
                    .map(|(r, rng)| pick(r, cfg.temperature, rng))
                    .collect();
                for (s, &n) in seqs.iter_mut().zip(&next) {
                    s.push(n);
                }
                if step + 1 < cfg.new_tokens {
                    let tok = Tensor::from_vec(next, chunk.len() * k, &model.device)?;
                    logits = model.step(&tok, &mut caches, t + step)?;
                }
            }
            for (j, &i) in chunk.iter().enumerate() {
                for s in 0..k {
                    out[i][s] = std::mem::take(&mut seqs[j * k + s]);
                }
            }
            done += chunk.len();
            progress(done);
        }
    }
    Ok(out)
}
