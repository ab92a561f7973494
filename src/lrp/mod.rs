//! The relevance engine: one forward pass, then a hand-written backward pass through the
//! layers' AttnLRP rules (each rule lives beside its layer's forward in `model/layers/`), with
//! per-weight relevance accumulated on the way. No autograd graph is built.
//!
//! Memory modes: `Store` keeps every block's internals from the forward; `Recompute` keeps only
//! block inputs and recomputes a block's internals when the backward pass reaches it, so peak
//! memory is weights + accumulators + one block's activations.

pub mod accum;
pub mod checkpoint;
pub mod file;
pub mod rules;

use crate::fail;
use crate::model::DecoderModel;
use anyhow::Result;
use candle_core::{DType, Tensor, D};
use rules::Bwd;

/// What the start relevance explains.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Target {
    /// Every position t < T−1 explains the logit of the true next token.
    NextToken,
    /// Every position t < T−1 explains the log-probability of the true next token (the
    /// log-softmax's own gradient, `e_y − p`, seeds the pass): relevance for the model's loss
    /// rather than for one raw logit, so competing tokens count too.
    NextTokenLogprob,
    /// The final position explains the logit of `token` (default: the argmax).
    Last { token: Option<u32> },
    /// `logit(target) − logit(foil)` at the final position.
    LogitDiff { target: u32, foil: u32 },
    /// The logits of the continuation tokens after a prompt of `prompt_len` tokens (with
    /// `logprob`: their log-probabilities, as `NextTokenLogprob` is to `NextToken`).
    Span { prompt_len: usize, logprob: bool },
    /// The logits (or log-probabilities) of the tokens at these positions (each predicted from
    /// the one before), e.g. only the flagged words of a continuation.
    Tokens {
        positions: Vec<usize>,
        logprob: bool,
    },
    /// At every continuation position (after a prompt of `prompt_len` tokens), the probability
    /// that the next token belongs to `set` (e.g. a lexicon's words): the expected number of
    /// such tokens along the continuation. Signed relevance is, to first order, how much that
    /// expectation falls when a component is removed.
    SetMass {
        prompt_len: usize,
        #[serde(skip)]
        set: std::sync::Arc<TokenSet>,
    },
}

/// A set of next tokens that may depend on the current one (the later pieces of words that
/// the tokenizer splits).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenSet {
    /// In the set at every position.
    pub always: Vec<u32>,
    /// In the set when the current token is the key.
    pub after: std::collections::HashMap<u32, Vec<u32>>,
}

impl TokenSet {
    /// The set's members for the position whose input token is `current`.
    pub fn at(&self, current: u32) -> impl Iterator<Item = u32> + '_ {
        self.always
            .iter()
            .chain(self.after.get(&current).into_iter().flatten())
            .copied()
    }

    pub fn len(&self) -> usize {
        self.always.len() + self.after.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::NextToken => "next-token",
            Target::NextTokenLogprob => "next-token-logprob",
            Target::Last { .. } => "last",
            Target::LogitDiff { .. } => "logit-diff",
            Target::Span { logprob: false, .. } => "span",
            Target::Span { logprob: true, .. } => "span-logprob",
            Target::Tokens { logprob: false, .. } => "tokens",
            Target::Tokens { logprob: true, .. } => "tokens-logprob",
            Target::SetMass { .. } => "set-mass",
        }
    }

    /// Whether each explained token's log-probability (not its logit) is explained.
    pub fn is_logprob(&self) -> bool {
        matches!(
            self,
            Target::NextTokenLogprob
                | Target::Span { logprob: true, .. }
                | Target::Tokens { logprob: true, .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryMode {
    Store,
    Recompute,
}

/// Per-pass results besides the accumulated weight relevance.
#[derive(Debug, Clone)]
pub struct PassResult {
    /// The start relevance (sum of the explained logits) per sequence.
    pub start_per_seq: Vec<f64>,
    /// Relevance of each input token (token embedding · gradient, summed over hidden): `[B][T]`.
    pub input_relevance: Vec<Vec<f32>>,
    /// OPT: relevance reaching the learned position embeddings `[B][T]`.
    pub position_relevance: Option<Vec<Vec<f32>>>,
    /// `last`: the explained token of each sequence.
    pub target_ids: Option<Vec<u32>>,
}

fn row_sums(x: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(x.sum(D::Minus1)?.to_vec2::<f32>()?)
}

/// Rows of the head's output taken at a time for the full-vocabulary softmax, so the
/// `[rows, vocab]` probabilities stay small for long sequences.
const HEAD_ROWS: usize = 128;

/// For head inputs `o` `[rows, d]`: the softmax over the vocabulary `p`, its log-normaliser
/// `logsumexp` `[rows, 1]` and `p · W` `[rows, d]` (the softmax's pull on the head's input).
fn head_softmax(o: &Tensor, head_w: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let logits = crate::kernels::gemm::mm(&o.to_dtype(DType::F32)?, &head_w.t()?)?;
    let mx = logits.max_keepdim(1)?;
    let e = logits.broadcast_sub(&mx)?.exp()?;
    let s = e.sum_keepdim(1)?;
    let lse = (s.log()? + mx)?;
    let p = e.broadcast_div(&s)?;
    let gp = crate::kernels::gemm::mm(&p, head_w)?;
    Ok((p, lse, gp))
}

/// Run one relevance pass on `ids` `[B, T]`, accumulating weight relevance into `bwd.acc`.
pub fn relevance_pass(
    model: &DecoderModel,
    ids: &Tensor,
    target: &Target,
    mode: MemoryMode,
    bwd: &mut Bwd,
) -> Result<PassResult> {
    crate::kernels::on_workers(&model.device, || pass(model, ids, target, mode, bwd))
}

fn pass(
    model: &DecoderModel,
    ids: &Tensor,
    target: &Target,
    mode: MemoryMode,
    bwd: &mut Bwd,
) -> Result<PassResult> {
    model.check_input(ids)?;
    let (b, t) = ids.dims2()?;
    if matches!(target, Target::NextToken | Target::NextTokenLogprob) && t < 2 {
        fail!(
            Input,
            "next-token relevance needs sequences of at least 2 tokens, got {t}"
        );
    }
    if let Target::Span { prompt_len, .. } | Target::SetMass { prompt_len, .. } = target {
        if *prompt_len == 0 || *prompt_len >= t {
            fail!(Input, "a continuation span needs a non-empty prompt and continuation ({prompt_len} of {t} tokens)");
        }
    }
    if let Target::Tokens { positions, .. } = target {
        if positions.is_empty() || positions.iter().any(|&p| p == 0 || p >= t) {
            fail!(
                Input,
                "token positions to explain must be in 1..{t} and not empty, got {positions:?}"
            );
        }
    }
    let ctx = model.attn_ctx(t)?;
    let ids_v: Vec<Vec<u32>> = ids.to_vec2::<u32>()?;

    // Embeddings (kept apart so that their relevance can be read off).
    let emb = &model.embed;
    let e = emb
        .tokens
        .index_select(&ids.flatten_all()?, 0)?
        .to_dtype(DType::F32)?
        .reshape((b, t, emb.tokens.dims()[1]))?;
    let e_proj = match &emb.project_in {
        Some(p) => p.forward(&e)?,
        None => e.clone(),
    };
    let pos = emb.position_embeddings(t)?;
    let x0 = match &pos {
        Some(p) => e_proj.broadcast_add(p)?,
        None => e_proj.clone(),
    };

    // Forward through the blocks.
    let mut inputs = Vec::with_capacity(model.blocks.len());
    let mut stored = Vec::new();
    let mut h = x0;
    for block in &model.blocks {
        inputs.push(h.clone());
        let keep = mode == MemoryMode::Store;
        let (y, saved) = block.forward_t(&h, &ctx, keep)?;
        if let Some(s) = saved {
            stored.push(s);
        }
        h = y;
    }
    let h_last = h;
    let normed = match &model.final_norm {
        Some(n) => n.forward(&h_last)?,
        None => h_last.clone(),
    };
    let out = match &model.project_out {
        Some(p) => p.forward(&normed)?,
        None => normed.clone(),
    };
    let head_w = crate::model::layers::f32_of(&model.lm_head.weight)?.into_owned();
    let dout = head_w.dims()[1];

    // Seeds: (sequence, position, token, coefficient).
    let mut seeds: Vec<(usize, usize, u32, f32)> = Vec::new();
    let mut target_ids = None;
    match target {
        Target::NextToken | Target::NextTokenLogprob => {
            for (bi, row) in ids_v.iter().enumerate() {
                for ti in 0..t - 1 {
                    seeds.push((bi, ti, row[ti + 1], 1.0));
                }
            }
        }
        Target::Span { prompt_len, .. } => {
            for (bi, row) in ids_v.iter().enumerate() {
                for ti in prompt_len - 1..t - 1 {
                    seeds.push((bi, ti, row[ti + 1], 1.0));
                }
            }
        }
        Target::Tokens { positions, .. } => {
            for (bi, row) in ids_v.iter().enumerate() {
                for &p in positions {
                    seeds.push((bi, p - 1, row[p], 1.0));
                }
            }
        }
        Target::Last { token } => {
            let last = out.narrow(1, t - 1, 1)?.squeeze(1)?; // [B, dout]
            let mut chosen = Vec::with_capacity(b);
            match token {
                Some(tok) => {
                    if *tok as usize >= model.dims.vocab {
                        fail!(
                            Usage,
                            "--token {tok} is outside the vocabulary (size {})",
                            model.dims.vocab
                        );
                    }
                    chosen = vec![*tok; b];
                }
                None => {
                    let logits = crate::kernels::gemm::mm(&last, &head_w.t()?)?;
                    for row in logits.to_vec2::<f32>()? {
                        // First maximum, as torch.argmax.
                        let mut best = 0usize;
                        for (i, &v) in row.iter().enumerate() {
                            if v > row[best] {
                                best = i;
                            }
                        }
                        chosen.push(best as u32);
                    }
                }
            }
            for (bi, &tok) in chosen.iter().enumerate() {
                seeds.push((bi, t - 1, tok, 1.0));
            }
            target_ids = Some(chosen);
        }
        Target::LogitDiff { target: tg, foil } => {
            for tok in [tg, foil] {
                if *tok as usize >= model.dims.vocab {
                    fail!(
                        Usage,
                        "token id {tok} is outside the vocabulary (size {})",
                        model.dims.vocab
                    );
                }
            }
            for bi in 0..b {
                seeds.push((bi, t - 1, *tg, 1.0));
                seeds.push((bi, t - 1, *foil, -1.0));
            }
        }
        // Seeded below from the probabilities.
        Target::SetMass { .. } => {}
    }

    // Start relevance and the gradient at the head's input, without the full vocabulary matmul.
    let out_v = out.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut g_out = vec![0f32; b * t * dout];
    let mut start = vec![0f64; b];
    accum::with_f32(&head_w, |wv| {
        for &(bi, ti, tok, c) in &seeds {
            let row = &wv[tok as usize * dout..(tok as usize + 1) * dout];
            let off = (bi * t + ti) * dout;
            let hv = &out_v[off..off + dout];
            let logit: f64 = row
                .iter()
                .zip(hv)
                .map(|(w, h)| (*w as f64) * (*h as f64))
                .sum();
            start[bi] += c as f64 * logit;
            for (g, w) in g_out[off..off + dout].iter_mut().zip(row) {
                *g += c * w;
            }
        }
    })?;
    if target.is_logprob() {
        // log p(y) = logit(y) − logsumexp(logits): subtract each explaining position's
        // logsumexp from the start relevance and its gradient `Σ_v p_v·W_v` from the seed,
        // weighted by that position's seed coefficients. Rows in chunks, so the `[rows, vocab]`
        // probabilities stay small for long sequences.
        let mut coef = vec![0f32; b * t];
        for &(bi, ti, _, c) in &seeds {
            coef[bi * t + ti] += c;
        }
        for (bi, st) in start.iter_mut().enumerate() {
            let rows_of = &coef[bi * t..(bi + 1) * t];
            let (Some(first), Some(last)) = (
                rows_of.iter().position(|&c| c != 0.0),
                rows_of.iter().rposition(|&c| c != 0.0),
            ) else {
                continue;
            };
            for r0 in (first..=last).step_by(HEAD_ROWS) {
                let rows = HEAD_ROWS.min(last + 1 - r0);
                let cv = &rows_of[r0..r0 + rows];
                let o = out.get(bi)?.narrow(0, r0, rows)?;
                let (_, lse, gp) = head_softmax(&o, &head_w)?;
                let lse = lse.flatten_all()?.to_vec1::<f32>()?;
                *st -= lse
                    .iter()
                    .zip(cv)
                    .map(|(v, c)| *v as f64 * *c as f64)
                    .sum::<f64>();
                accum::with_f32(&gp, |gv| {
                    let off = (bi * t + r0) * dout;
                    for (r, c) in cv.iter().enumerate() {
                        if *c == 0.0 {
                            continue;
                        }
                        let gs = &mut g_out[off + r * dout..off + (r + 1) * dout];
                        for (g, v) in gs.iter_mut().zip(&gv[r * dout..(r + 1) * dout]) {
                            *g -= c * v;
                        }
                    }
                })?;
            }
        }
    }
    if let Target::SetMass { prompt_len, set } = target {
        // m = Σ_{v∈S} p_v per position: ∂m/∂logit_u = p_u·[u∈S] − m·p_u, so the head's input
        // gets Σ_{v∈S} p_v·W_v − m·Σ_u p_u·W_u. Rows in chunks as above.
        for (bi, st) in start.iter_mut().enumerate() {
            for r0 in (prompt_len - 1..t - 1).step_by(HEAD_ROWS) {
                let rows = HEAD_ROWS.min(t - 1 - r0);
                let (p, _, gp) = head_softmax(&out.get(bi)?.narrow(0, r0, rows)?, &head_w)?;
                let (pv, gp) = (p.to_vec2::<f32>()?, gp.to_vec2::<f32>()?);
                accum::with_f32(&head_w, |wv| {
                    for r in 0..rows {
                        let ti = r0 + r;
                        let probs = &pv[r];
                        let mass: f64 = set
                            .at(ids_v[bi][ti])
                            .map(|v| probs[v as usize] as f64)
                            .sum();
                        *st += mass;
                        let off = (bi * t + ti) * dout;
                        let gs = &mut g_out[off..off + dout];
                        for (g, q) in gs.iter_mut().zip(&gp[r]) {
                            *g -= mass as f32 * q;
                        }
                        for v in set.at(ids_v[bi][ti]) {
                            let c = probs[v as usize];
                            let row = &wv[v as usize * dout..(v as usize + 1) * dout];
                            for (g, w) in gs.iter_mut().zip(row) {
                                *g += c * w;
                            }
                        }
                    }
                })?;
            }
        }
    }
    let mut g = Tensor::from_vec(g_out, (b, t, dout), &model.device)?;
    if let Some(p) = &model.project_out {
        g = p.backward(&normed, &g, bwd, false)?;
    }
    if let Some(n) = &model.final_norm {
        g = n.backward(&h_last, &g, bwd.rule)?;
    }

    // Backward through the blocks, last to first.
    for (i, block) in model.blocks.iter().enumerate().rev() {
        let recomputed;
        let saved = match mode {
            MemoryMode::Store => &stored[i],
            MemoryMode::Recompute => {
                recomputed = block.forward_t(&inputs[i], &ctx, true)?.1.expect("kept");
                &recomputed
            }
        };
        g = block.backward(saved, &g, &ctx, bwd)?;
    }

    let position_relevance = match &pos {
        Some(p) => Some(row_sums(&g.broadcast_mul(p)?)?),
        None => None,
    };
    let g_e = match &emb.project_in {
        Some(p) => p.backward(&e, &g, bwd, false)?,
        None => g,
    };
    let input_relevance = row_sums(&(&e * &g_e)?)?;
    Ok(PassResult {
        start_per_seq: start,
        input_relevance,
        position_relevance,
        target_ids,
    })
}

/// Estimated bytes of saved activations per sample for `Store` mode (f32).
pub fn store_bytes(model: &DecoderModel, seq_len: usize) -> usize {
    let d = &model.dims;
    let t = seq_len;
    let per_block = t * d.hidden * 4 // block input, norm outputs, residual
        + t * d.heads * d.head_dim * 2 // q, merged
        + t * d.kv_heads * d.head_dim * 2 // k, v
        + d.heads * t * t // probabilities
        + t * d.intermediate * 4; // pre-activation, activation, up, product
    per_block * d.layers * 4
}

/// Estimated peak bytes of one attribution: weights (as stored, plus the f32 copy a linear
/// makes of a non-f32 weight), accumulators, saved activations (all blocks, or one block and
/// the block inputs when recomputing), logits and their gradient, and the largest per-layer
/// weight gradient.
pub fn memory_needed(
    model: &DecoderModel,
    seq_len: usize,
    mode: MemoryMode,
    per_weight: bool,
) -> usize {
    let d = &model.dims;
    let t = seq_len;
    let lin: usize = model.linears().iter().map(|l| l.weight.elem_count()).sum();
    let largest = model
        .linears()
        .iter()
        .map(|l| l.weight.elem_count())
        .max()
        .unwrap_or(0);
    let weights = model.parameter_count() * model.blocks[0].attn.q.weight.dtype().size_in_bytes();
    let acc = if per_weight { lin * 4 } else { 0 };
    let acts = match mode {
        MemoryMode::Store => store_bytes(model, t),
        MemoryMode::Recompute => {
            store_bytes(model, t) / d.layers.max(1) + d.layers * t * d.hidden * 4
        }
    };
    let logits = t * d.vocab * 4 * 3;
    weights + acc + acts + logits + largest * 4 * 2
}

/// Refuse a run that would not fit in the memory available (unless `force`), naming the flags
/// that lower it.
pub fn check_memory(
    model: &DecoderModel,
    seq_len: usize,
    mode: MemoryMode,
    per_weight: bool,
    force: bool,
) -> Result<()> {
    let need = memory_needed(model, seq_len, mode, per_weight);
    let Some(avail) = crate::util::mem_available() else {
        return Ok(());
    };
    if need > avail && !force {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        let hint = match mode {
            MemoryMode::Store => "--memory recompute, a smaller --seq-len or --dtype bf16",
            MemoryMode::Recompute => "a smaller --seq-len or --dtype bf16",
        };
        fail!(
            Resource,
            "this run needs about {:.1} GiB of memory but {:.1} GiB are available; lower it with {hint} (or --force to try anyway)",
            gib(need),
            gib(avail)
        );
    }
    Ok(())
}

/// Pick a memory mode: keep everything when it fits comfortably, recompute otherwise.
pub fn auto_mode(model: &DecoderModel, seq_len: usize) -> MemoryMode {
    let need = store_bytes(model, seq_len);
    let avail = crate::util::mem_available().unwrap_or(8 << 30);
    if need <= (2usize << 30).min(avail / 4) {
        MemoryMode::Store
    } else {
        MemoryMode::Recompute
    }
}

/// Attribute one sample (batch 1), accumulating into `acc`; returns its token relevance and
/// start relevance.
pub fn run_one(
    model: &DecoderModel,
    sample: &[u32],
    target: &Target,
    rule: rules::Rule,
    mode: MemoryMode,
    acc: &mut accum::Accumulators,
) -> Result<(Vec<f32>, f64)> {
    crate::util::interrupt::check()?;
    let ids = Tensor::from_slice(sample, (1, sample.len()), &model.device)?;
    let mut bwd = Bwd {
        rule,
        acc: &mut *acc,
    };
    let r = relevance_pass(model, &ids, target, mode, &mut bwd)?;
    acc.samples += 1;
    Ok((
        r.input_relevance.into_iter().next().unwrap_or_default(),
        r.start_per_seq[0],
    ))
}

/// Attribute a list of samples (batch 1 each), accumulating into `acc`.
/// Returns the per-sample token relevances and start values.
pub fn run_samples(
    model: &DecoderModel,
    samples: &[Vec<u32>],
    target: impl Fn(usize) -> Target,
    rule: rules::Rule,
    mode: MemoryMode,
    acc: &mut accum::Accumulators,
    mut progress: impl FnMut(usize),
) -> Result<(Vec<Vec<f32>>, Vec<f64>)> {
    let mut token_rel = Vec::with_capacity(samples.len());
    let mut starts = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let (t, st) = run_one(model, s, &target(i), rule, mode, acc)?;
        token_rel.push(t);
        starts.push(st);
        progress(i + 1);
    }
    Ok((token_rel, starts))
}

/// A `--shard i/n` spec: this job's part `i` (0-based) of `n`.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let parsed = s.split_once('/').and_then(|(i, n)| {
        Some((
            i.trim().parse::<usize>().ok()?,
            n.trim().parse::<usize>().ok()?,
        ))
    });
    match parsed {
        Some((i, n)) if n >= 1 && i < n => Ok((i, n)),
        _ => fail!(Usage, "--shard {s}: expected i/n with 0 ≤ i < n (e.g. 0/4)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Tokens` over every continuation position is the `Span` target exactly; a subset of the
    /// positions explains less (and differently).
    #[test]
    fn token_positions_generalise_the_continuation_span() {
        let loaded =
            crate::source::load(&crate::source::ModelRequest::cpu("builtin:demo-llama")).unwrap();
        let m = &loaded.model;
        let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 500).collect();
        let run = |t: Target| {
            let mut acc = accum::Accumulators::new(accum::Aggregation::Signed);
            let (tok, start) = run_one(
                m,
                &ids,
                &t,
                rules::Rule::Lrp { epsilon: None },
                MemoryMode::Store,
                &mut acc,
            )
            .unwrap();
            (acc, tok, start)
        };
        let (a, ta, sa) = run(Target::Span {
            prompt_len: 10,
            logprob: false,
        });
        let (b, tb, sb) = run(Target::Tokens {
            positions: (10..24).collect(),
            logprob: false,
        });
        assert_eq!(sa, sb);
        assert_eq!(ta, tb);
        for (k, l) in &a.layers {
            assert_eq!(l.weight, b.layers[k].weight, "{k}");
        }
        let (c, _, sc) = run(Target::Tokens {
            positions: vec![12, 20],
            logprob: false,
        });
        assert_ne!(sc, sa);
        let k = a.layers.keys().next().unwrap();
        assert_ne!(c.layers[k].weight, a.layers[k].weight);
        // Out-of-range positions are refused.
        let mut acc = accum::Accumulators::new(accum::Aggregation::Abs);
        for bad in [vec![], vec![0], vec![24]] {
            let r = run_one(
                m,
                &ids,
                &Target::Tokens {
                    positions: bad,
                    logprob: false,
                },
                rules::Rule::Grad,
                MemoryMode::Store,
                &mut acc,
            );
            assert!(r.is_err());
        }
    }

    /// The probability mass of a token set: with one member at one position it is that token's
    /// probability, and its relevance is the log-probability's scaled by it; members add up;
    /// a member keyed on the current token counts only after that token.
    #[test]
    fn set_mass_is_the_probability_and_adds_over_members() {
        let loaded =
            crate::source::load(&crate::source::ModelRequest::cpu("builtin:demo-llama")).unwrap();
        let m = &loaded.model;
        let ids: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 500).collect();
        let run = |t: Target, rule| {
            let mut acc = accum::Accumulators::new(accum::Aggregation::Signed);
            let (_, start) = run_one(m, &ids, &t, rule, MemoryMode::Store, &mut acc).unwrap();
            (acc, start)
        };
        let mass = |always: Vec<u32>, after: Vec<(u32, Vec<u32>)>| Target::SetMass {
            prompt_len: 19,
            set: std::sync::Arc::new(TokenSet {
                always,
                after: after.into_iter().collect(),
            }),
        };
        let x = Tensor::from_slice(&ids, (1, ids.len()), &m.device).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&m.forward(&x).unwrap().squeeze(0).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let (y, other) = (ids[19], 7u32);
        let py = probs[18][y as usize] as f64;
        for rule in [rules::Rule::Grad, rules::Rule::Lrp { epsilon: None }] {
            let (a, sa) = run(mass(vec![y], vec![]), rule);
            assert!((sa - py).abs() < 1e-5 * py, "{sa} vs {py}");
            let (l, _) = run(
                Target::Tokens {
                    positions: vec![19],
                    logprob: true,
                },
                rule,
            );
            let (b, sb) = run(mass(vec![other], vec![]), rule);
            let (ab, sab) = run(mass(vec![y, other], vec![]), rule);
            assert!((sab - sa - sb).abs() < 1e-6);
            // Keyed on the current token (ids[18]): the same as always in the set; keyed on
            // another token: not in the set.
            let (k, sk) = run(mass(vec![], vec![(ids[18], vec![y])]), rule);
            assert_eq!(sk, sa);
            let (_, s0) = run(mass(vec![], vec![(ids[18] + 1, vec![y])]), rule);
            assert_eq!(s0, 0.0);
            for (name, la) in &a.layers {
                let (ra, rl) = (&la.weight, &l.layers[name].weight);
                let scale = rl.iter().fold(0f32, |x, v| x.max(v.abs())) * py as f32;
                for i in 0..ra.len() {
                    assert!(
                        (ra[i] - py as f32 * rl[i]).abs() <= 1e-4 * scale,
                        "{name}[{i}]"
                    );
                    let sum = ra[i] + b.layers[name].weight[i];
                    assert!(
                        (ab.layers[name].weight[i] - sum).abs() <= 1e-4 * scale,
                        "{name}[{i}]"
                    );
                }
                assert_eq!(ra, &k.layers[name].weight, "{name}");
            }
        }
    }

    /// `next-token-logprob` with the plain-gradient rule is `W ⊙ ∇W` of `Σ_t log p(x_{t+1})`:
    /// its start value is the sequence's log-likelihood and its weight relevance matches a
    /// central finite difference of that log-likelihood.
    #[test]
    fn logprob_target_is_the_log_likelihood_and_its_gradient() {
        let loaded =
            crate::source::load(&crate::source::ModelRequest::cpu("builtin:demo-llama")).unwrap();
        let m = &loaded.model;
        // Longer than one chunk of rows of the log-softmax.
        let ids: Vec<u32> = (0..160).map(|i| (i * 37 + 5) % 500).collect();
        let loglik = |m: &DecoderModel| -> f64 {
            let x = Tensor::from_slice(&ids, (1, ids.len()), &m.device).unwrap();
            let logits = m.forward(&x).unwrap().squeeze(0).unwrap();
            let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            (0..ids.len() - 1)
                .map(|t| lp[t][ids[t + 1] as usize] as f64)
                .sum()
        };
        let mut acc = accum::Accumulators::new(accum::Aggregation::Signed);
        let (_, start) = run_one(
            m,
            &ids,
            &Target::NextTokenLogprob,
            rules::Rule::Grad,
            MemoryMode::Store,
            &mut acc,
        )
        .unwrap();
        let ll = loglik(m);
        assert!(
            (start - ll).abs() < 1e-4 * ll.abs(),
            "start {start} vs {ll}"
        );
        // A span of log-probabilities is the same seed restricted to the continuation: from
        // the first position it is the whole sequence's; from a later one, its start value is
        // the continuation's log-likelihood.
        let mut acc_span = accum::Accumulators::new(accum::Aggregation::Signed);
        let span = |prompt_len| Target::Span {
            prompt_len,
            logprob: true,
        };
        let (_, s1) = run_one(
            m,
            &ids,
            &span(1),
            rules::Rule::Grad,
            MemoryMode::Store,
            &mut acc_span,
        )
        .unwrap();
        assert_eq!(s1, start);
        for (k, l) in &acc.layers {
            assert_eq!(l.weight, acc_span.layers[k].weight, "{k}");
        }
        let x = Tensor::from_slice(&ids, (1, ids.len()), &m.device).unwrap();
        let lp =
            candle_nn::ops::log_softmax(&m.forward(&x).unwrap().squeeze(0).unwrap(), D::Minus1)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
        let cont: f64 = (139..ids.len() - 1)
            .map(|t| lp[t][ids[t + 1] as usize] as f64)
            .sum();
        let mut acc_tail = accum::Accumulators::new(accum::Aggregation::Signed);
        let (_, s140) = run_one(
            m,
            &ids,
            &span(140),
            rules::Rule::Grad,
            MemoryMode::Store,
            &mut acc_tail,
        )
        .unwrap();
        assert!((s140 - cont).abs() < 1e-4 * cont.abs(), "{s140} vs {cont}");
        // The logit target differs: the softmax's competition is part of the gradient.
        let mut acc_logit = accum::Accumulators::new(accum::Aggregation::Signed);
        run_one(
            m,
            &ids,
            &Target::NextToken,
            rules::Rule::Grad,
            MemoryMode::Store,
            &mut acc_logit,
        )
        .unwrap();
        let names: Vec<String> = m.linears().iter().map(|l| l.name.clone()).collect();
        for name in [names.first().unwrap(), names.last().unwrap()] {
            let r = &acc.layers[name].weight;
            assert_ne!(r, &acc_logit.layers[name].weight);
            // The weight with the largest relevance in this layer.
            let k = (0..r.len())
                .max_by(|&a, &b| r[a].abs().total_cmp(&r[b].abs()))
                .unwrap();
            let lin = m.linears().into_iter().find(|l| &l.name == name).unwrap();
            let w = lin.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let h = 1e-2 * w[k].abs().max(1e-3);
            let at = |d: f32| {
                let mut m2 = m.clone();
                let l = m2
                    .linears_mut()
                    .into_iter()
                    .find(|l| &l.name == name)
                    .unwrap();
                let mut v = w.clone();
                v[k] += d;
                l.weight =
                    Tensor::from_vec(v, l.weight.dims(), &l.weight.device().clone()).unwrap();
                loglik(&m2)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64) * w[k] as f64;
            let rel = r[k] as f64;
            assert!(
                (fd - rel).abs() < 0.02 * rel.abs(),
                "{name}[{k}]: W·∇W {rel} vs finite difference {fd}"
            );
        }
    }
}
