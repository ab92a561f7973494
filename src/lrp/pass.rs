//! One relevance pass: the forward through the model keeping what the backward needs (or only
//! the block inputs, to recompute), the seed at the head's input from the target, then the
//! backward through the layers' rules, last block to first.

use super::head::HeadW;
use super::memory::MemoryMode;
use super::target::{Target, TokenSet};
use crate::fail;
use crate::model::layers::AttnCtx;
use crate::model::{BlockSaved, DecoderModel};
use crate::relevance::accum::{self, Accumulators};
use crate::relevance::rules::{Bwd, Rule};
use anyhow::Result;
use candle_core::{DType, Tensor, D};

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
    target.check(t)?;
    let ctx = model.attn_ctx(t)?;
    let ids_v: Vec<Vec<u32>> = ids.to_vec2::<u32>()?;
    let lowest = bwd.acc.blocks.as_ref().map_or(0, |r| r.start);
    let fwd = Forward::run(model, ids, &ctx, mode, lowest)?;
    let head = Head {
        out: &fwd.out,
        w: HeadW {
            w: &model.lm_head.weight,
        },
        b,
        t,
        dout: model.lm_head.weight.dims()[1],
    };
    let (seeds, target_ids) = seeds(model, target, &ids_v, &head)?;
    let (start, g_out) = head.seed(&seeds, target, &ids_v)?;
    let g = Tensor::from_vec(g_out, (b, t, head.dout), &model.device)?;
    let (input_relevance, position_relevance) = fwd.backward(model, g, &ctx, mode, bwd)?;
    Ok(PassResult {
        start_per_seq: start,
        input_relevance,
        position_relevance,
        target_ids,
    })
}

/// What the forward half of a pass keeps for the backward half.
struct Forward {
    /// Token embeddings `[B, T, E]` (f32), before any input projection: kept apart so that
    /// their relevance can be read off.
    e: Tensor,
    /// Learned position embeddings (OPT).
    pos: Option<Tensor>,
    /// Each block's input.
    inputs: Vec<Tensor>,
    /// Each block's internals (`Store` mode only).
    stored: Vec<BlockSaved>,
    /// The last block's output.
    h_last: Tensor,
    /// The final norm's output.
    normed: Tensor,
    /// The head's input.
    out: Tensor,
}

impl Forward {
    fn run(
        model: &DecoderModel,
        ids: &Tensor,
        ctx: &AttnCtx,
        mode: MemoryMode,
        lowest: usize,
    ) -> Result<Self> {
        let (b, t) = ids.dims2()?;
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
        let mut inputs = Vec::with_capacity(model.blocks.len());
        let mut stored = Vec::new();
        let mut h = x0;
        for (i, block) in model.blocks.iter().enumerate() {
            inputs.push(h.clone());
            // Blocks below an accumulated group are never reached by the backward half.
            let keep = mode == MemoryMode::Store && i >= lowest;
            let (y, saved) = block.forward_t(&h, ctx, keep)?;
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
        Ok(Self {
            e,
            pos,
            inputs,
            stored,
            h_last,
            normed,
            out,
        })
    }

    /// The backward half from the gradient `g` at the head's input: through the output
    /// projection, the final norm and the blocks, last to first. Returns the relevance of the
    /// input tokens and (OPT) of the position embeddings.
    fn backward(
        &self,
        model: &DecoderModel,
        mut g: Tensor,
        ctx: &AttnCtx,
        mode: MemoryMode,
        bwd: &mut Bwd,
    ) -> Result<(PerToken, Option<PerToken>)> {
        if let Some(p) = &model.project_out {
            g = p.backward(&self.normed, &g, bwd, false)?;
        }
        if let Some(n) = &model.final_norm {
            g = n.backward(&self.h_last, &g, bwd.rule)?;
        }
        let group = bwd.acc.blocks.clone().unwrap_or(0..model.blocks.len());
        let enabled = bwd.acc.enabled;
        for (i, block) in model.blocks.iter().enumerate().rev() {
            if i < group.start {
                // Nothing below the group is accumulated: the token relevance is left to the
                // group that holds the first block.
                bwd.acc.enabled = enabled;
                return Ok((Vec::new(), None));
            }
            bwd.acc.enabled = enabled && group.contains(&i);
            let recomputed;
            let saved = match mode {
                MemoryMode::Store => &self.stored[i - group.start],
                MemoryMode::Recompute => {
                    recomputed = block
                        .forward_t(&self.inputs[i], ctx, true)?
                        .1
                        .expect("kept");
                    &recomputed
                }
            };
            g = block.backward(saved, &g, ctx, bwd)?;
        }
        bwd.acc.enabled = enabled;
        let position_relevance = match &self.pos {
            Some(p) => Some(row_sums(&g.broadcast_mul(p)?)?),
            None => None,
        };
        let g_e = match &model.embed.project_in {
            Some(p) => p.backward(&self.e, &g, bwd, false)?,
            None => g,
        };
        let input_relevance = row_sums(&(&self.e * &g_e)?)?;
        Ok((input_relevance, position_relevance))
    }
}

/// One value per token of each sequence: `[B][T]`.
type PerToken = Vec<Vec<f32>>;

/// One explained logit: (sequence, position, token, coefficient).
type Seed = (usize, usize, u32, f32);

/// The explained logits of a target, and (`last`) the token chosen for each sequence.
fn seeds(
    model: &DecoderModel,
    target: &Target,
    ids_v: &[Vec<u32>],
    head: &Head,
) -> Result<(Vec<Seed>, Option<Vec<u32>>)> {
    let (b, t) = (head.b, head.t);
    let mut seeds: Vec<Seed> = Vec::new();
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
            let chosen = last_tokens(model, *token, head)?;
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
        // Seeded from the probabilities (`Head::seed`).
        Target::SetMass { .. } => {}
    }
    Ok((seeds, target_ids))
}

/// The token the `last` target explains in each sequence: the given one, or the argmax.
fn last_tokens(model: &DecoderModel, token: Option<u32>, head: &Head) -> Result<Vec<u32>> {
    let (b, t) = (head.b, head.t);
    let last = head.out.narrow(1, t - 1, 1)?.squeeze(1)?; // [B, dout]
    if let Some(tok) = token {
        if tok as usize >= model.dims.vocab {
            fail!(
                Usage,
                "token id {tok} is outside the vocabulary (size {})",
                model.dims.vocab
            );
        }
        return Ok(vec![tok; b]);
    }
    let logits = head.w.logits(&last.to_dtype(DType::F32)?)?;
    let mut chosen = Vec::with_capacity(b);
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
    Ok(chosen)
}

/// The head's input and (f32) weight: the start relevance and the gradient at the head's input
/// are formed from the explained rows of the weight, without the full vocabulary product.
struct Head<'a> {
    /// The head's input `[B, T, dout]`.
    out: &'a Tensor,
    /// The head's weight `[vocab, dout]`.
    w: HeadW<'a>,
    b: usize,
    t: usize,
    dout: usize,
}

impl Head<'_> {
    /// The start relevance per sequence and the gradient at the head's input (`[B·T·dout]`).
    fn seed(
        &self,
        seeds: &[Seed],
        target: &Target,
        ids_v: &[Vec<u32>],
    ) -> Result<(Vec<f64>, Vec<f32>)> {
        let (mut start, mut g_out) = self.seed_logits(seeds)?;
        if target.is_logprob() {
            self.subtract_logsumexp(seeds, &mut start, &mut g_out)?;
        }
        if let Target::SetMass { prompt_len, set } = target {
            self.seed_set_mass(*prompt_len, set, ids_v, &mut start, &mut g_out)?;
        }
        Ok((start, g_out))
    }

    /// The explained logits (weighted by their coefficients) and their gradient.
    fn seed_logits(&self, seeds: &[Seed]) -> Result<(Vec<f64>, Vec<f32>)> {
        let (b, t, dout) = (self.b, self.t, self.dout);
        let out_v = self
            .out
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut g_out = vec![0f32; b * t * dout];
        let mut start = vec![0f64; b];
        self.w.with_rows(seeds.iter().map(|s| s.2), |row_of| {
            for &(bi, ti, tok, c) in seeds {
                let row = row_of(tok);
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
        Ok((start, g_out))
    }

    /// log p(y) = logit(y) − logsumexp(logits): subtract each explaining position's
    /// logsumexp from the start relevance and its gradient `Σ_v p_v·W_v` from the seed,
    /// weighted by that position's seed coefficients. Rows in chunks, so the `[rows, vocab]`
    /// probabilities stay small for long sequences.
    fn subtract_logsumexp(
        &self,
        seeds: &[Seed],
        start: &mut [f64],
        g_out: &mut [f32],
    ) -> Result<()> {
        let (b, t, dout) = (self.b, self.t, self.dout);
        let mut coef = vec![0f32; b * t];
        for &(bi, ti, _, c) in seeds {
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
                let o = self.out.get(bi)?.narrow(0, r0, rows)?;
                let (_, lse, gp) = self.w.softmax(&o)?;
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
        Ok(())
    }

    /// m = Σ_{v∈S} p_v per position: ∂m/∂logit_u = p_u·[u∈S] − m·p_u, so the head's input
    /// gets Σ_{v∈S} p_v·W_v − m·Σ_u p_u·W_u. Rows in chunks as in `subtract_logsumexp`.
    fn seed_set_mass(
        &self,
        prompt_len: usize,
        set: &TokenSet,
        ids_v: &[Vec<u32>],
        start: &mut [f64],
        g_out: &mut [f32],
    ) -> Result<()> {
        let (t, dout) = (self.t, self.dout);
        for (bi, st) in start.iter_mut().enumerate() {
            for r0 in (prompt_len - 1..t - 1).step_by(HEAD_ROWS) {
                let rows = HEAD_ROWS.min(t - 1 - r0);
                let (p, _, gp) = self.w.softmax(&self.out.get(bi)?.narrow(0, r0, rows)?)?;
                let (pv, gp) = (p.to_vec2::<f32>()?, gp.to_vec2::<f32>()?);
                let toks = (r0..r0 + rows).flat_map(|ti| set.at(ids_v[bi][ti]));
                self.w.with_rows(toks, |row_of| {
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
                            let row = row_of(v);
                            for (g, w) in gs.iter_mut().zip(row) {
                                *g += c * w;
                            }
                        }
                    }
                })?;
            }
        }
        Ok(())
    }
}

/// Attribute one sample (batch 1), accumulating into `acc`; returns its token relevance and
/// start relevance.
pub fn run_one(
    model: &DecoderModel,
    sample: &[u32],
    target: &Target,
    rule: Rule,
    mode: MemoryMode,
    acc: &mut Accumulators,
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
