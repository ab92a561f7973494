//! The decoder-only language model every architecture builds into, and the architecture trait.
//!
//! An architecture (one file: `llama.rs`, `opt.rs`) reads its `config.json`, takes its tensors
//! from the store by HF name and assembles a [`DecoderModel`] out of the shared layer kinds in
//! `layers/`. Evaluation, attribution and pruning all run this one forward implementation.

pub mod layers;
pub mod llama;
pub mod opt;
pub mod weights;

use crate::fail;
use crate::model::weights::WeightStore;
use crate::relevance::rules::Bwd;
use anyhow::Result;
use candle_core::{Device, Tensor};
use layers::attention::{AttnSaved, KvCache};
use layers::mlp::MlpSaved;
use layers::{Attention, AttnCtx, Embeddings, Linear, Mlp, Norm};

/// An architecture: one file implementing this trait plus one line in [`ARCHITECTURES`].
pub trait Architecture: Sync {
    /// `model_type` values of `config.json` this architecture reads.
    fn model_types(&self) -> &'static [&'static str];
    /// Build the model from the HF config and the checkpoint's tensors.
    fn build(&self, cfg: &serde_json::Value, store: &WeightStore) -> Result<DecoderModel>;
}

pub static ARCHITECTURES: &[&dyn Architecture] = &[&llama::Llama, &opt::Opt];

pub fn supported_types() -> Vec<&'static str> {
    ARCHITECTURES
        .iter()
        .flat_map(|a| a.model_types().iter().copied())
        .collect()
}

/// Build whatever architecture `model_type` names.
pub fn build(cfg: &serde_json::Value, store: &WeightStore) -> Result<DecoderModel> {
    let Some(mt) = cfg.get("model_type").and_then(|v| v.as_str()) else {
        fail!(
            Input,
            "config has no \"model_type\" (supported: {})",
            supported_types().join(", ")
        );
    };
    match ARCHITECTURES.iter().find(|a| a.model_types().contains(&mt)) {
        Some(a) => a.build(cfg, store),
        None => fail!(
            Input,
            "model_type '{mt}' is not supported (supported: {})",
            supported_types().join(", ")
        ),
    }
}

/// Sizes every part of sparc3 needs to know.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Dims {
    pub arch: String,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    /// Longest sequence the model supports (learned positions or `max_position_embeddings`).
    pub max_positions: usize,
}

/// Where the norms sit relative to the residual branches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPlacement {
    /// `x + f(norm(x))` (Llama, OPT with `do_layer_norm_before`).
    Pre,
    /// `norm(x + f(x))` (OPT-350m style).
    Post,
}

#[derive(Clone, Debug)]
pub struct Block {
    pub attn_norm: Norm,
    pub attn: Attention,
    pub mlp_norm: Norm,
    pub mlp: Mlp,
    pub placement: NormPlacement,
}

/// What a block's backward pass needs (internals kept by `forward_t`).
pub struct BlockSaved {
    pub x: Tensor,
    pub attn: AttnSaved,
    pub mlp: MlpSaved,
    /// Pre-norm: the residual stream between the branches (input of `mlp_norm`).
    /// Post-norm: the sums fed to the two norms.
    pub mid: Tensor,
    pub sum2: Option<Tensor>,
}

impl Block {
    pub fn forward(&self, x: &Tensor, ctx: &AttnCtx) -> Result<Tensor> {
        Ok(self.forward_t(x, ctx, false)?.0)
    }

    /// Forward, optionally keeping what the backward pass needs.
    pub fn forward_t(
        &self,
        x: &Tensor,
        ctx: &AttnCtx,
        keep: bool,
    ) -> Result<(Tensor, Option<BlockSaved>)> {
        self.forward_with(x, keep, |a, n| a.forward_t(n, ctx, keep))
    }

    /// Cached decoding of one new position per sequence (`x`: `[B, 1, hidden]`).
    pub fn forward_step(
        &self,
        x: &Tensor,
        cache: &mut KvCache,
        rope: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        Ok(self
            .forward_with(x, false, |a, n| Ok((a.forward_step(n, cache, rope)?, None)))?
            .0)
    }

    /// The block's wiring (norm placement, residuals, MLP) around an attention call, shared by
    /// the full forward and cached decoding.
    fn forward_with(
        &self,
        x: &Tensor,
        keep: bool,
        attn: impl FnOnce(&Attention, &Tensor) -> Result<(Tensor, Option<AttnSaved>)>,
    ) -> Result<(Tensor, Option<BlockSaved>)> {
        match self.placement {
            NormPlacement::Pre => {
                let (a, attn) = attn(&self.attn, &self.attn_norm.forward(x)?)?;
                let h = (x + a)?;
                let (m, mlp) = self.mlp.forward_t(&self.mlp_norm.forward(&h)?, keep)?;
                let y = (&h + m)?;
                let saved = match (attn, mlp) {
                    (Some(attn), Some(mlp)) => Some(BlockSaved {
                        x: x.clone(),
                        attn,
                        mlp,
                        mid: h,
                        sum2: None,
                    }),
                    _ => None,
                };
                Ok((y, saved))
            }
            NormPlacement::Post => {
                let (a, attn) = attn(&self.attn, x)?;
                let r1 = (x + a)?;
                let h = self.attn_norm.forward(&r1)?;
                let (m, mlp) = self.mlp.forward_t(&h, keep)?;
                let r2 = (&h + m)?;
                let y = self.mlp_norm.forward(&r2)?;
                let saved = match (attn, mlp) {
                    (Some(attn), Some(mlp)) => Some(BlockSaved {
                        x: x.clone(),
                        attn,
                        mlp,
                        mid: r1,
                        sum2: Some(r2),
                    }),
                    _ => None,
                };
                Ok((y, saved))
            }
        }
    }

    /// Backward through the block: residual adds pass the gradient unchanged.
    pub fn backward(
        &self,
        sv: &BlockSaved,
        g_y: &Tensor,
        ctx: &AttnCtx,
        bwd: &mut Bwd,
    ) -> Result<Tensor> {
        match self.placement {
            NormPlacement::Pre => {
                let g_n2 = self.mlp.backward(&sv.mlp, g_y, bwd)?;
                let g_h = (g_y + self.mlp_norm.backward(&sv.mid, &g_n2, bwd.rule)?)?;
                let g_n1 = self.attn.backward(&sv.attn, &g_h, ctx, bwd)?;
                Ok((&g_h + self.attn_norm.backward(&sv.x, &g_n1, bwd.rule)?)?)
            }
            NormPlacement::Post => {
                let r2 = sv.sum2.as_ref().expect("post-norm keeps its sums");
                let g_r2 = self.mlp_norm.backward(r2, g_y, bwd.rule)?;
                let g_h = (&g_r2 + self.mlp.backward(&sv.mlp, &g_r2, bwd)?)?;
                let g_r1 = self.attn_norm.backward(&sv.mid, &g_h, bwd.rule)?;
                Ok((&g_r1 + self.attn.backward(&sv.attn, &g_r1, ctx, bwd)?)?)
            }
        }
    }

    /// The block's linear layers in a fixed order (attention q, k, v, o, then the MLP).
    pub fn linears(&self) -> Vec<&Linear> {
        let a = &self.attn;
        let mut v = vec![&a.q, &a.k, &a.v, &a.o];
        match &self.mlp {
            Mlp::Gated { gate, up, down, .. } => v.extend([gate, up, down]),
            Mlp::Plain { fc1, fc2, .. } => v.extend([fc1, fc2]),
        }
        v
    }

    /// Each linear layer with its input as kept by `forward_t` (for input statistics).
    pub fn linear_inputs<'a>(&'a self, sv: &'a BlockSaved) -> Vec<(&'a Linear, &'a Tensor)> {
        let a = &self.attn;
        let mut v = vec![
            (&a.q, &sv.attn.x),
            (&a.k, &sv.attn.x),
            (&a.v, &sv.attn.x),
            (&a.o, &sv.attn.merged),
        ];
        match &self.mlp {
            Mlp::Gated { gate, up, down, .. } => v.extend([
                (gate, &sv.mlp.x),
                (up, &sv.mlp.x),
                (
                    down,
                    sv.mlp.h.as_ref().expect("gated MLP keeps its product"),
                ),
            ]),
            Mlp::Plain { fc1, fc2, .. } => v.extend([(fc1, &sv.mlp.x), (fc2, &sv.mlp.s)]),
        }
        v
    }

    /// The MLP's neurons: the layers whose rows make a neuron (`gate`, `up` / `fc1`) and the
    /// layer whose columns read it (`down` / `fc2`).
    pub fn neuron_layers(&self) -> (Vec<&Linear>, &Linear) {
        match &self.mlp {
            Mlp::Gated { gate, up, down, .. } => (vec![gate, up], down),
            Mlp::Plain { fc1, fc2, .. } => (vec![fc1], fc2),
        }
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let a = &mut self.attn;
        let mut v = vec![&mut a.q, &mut a.k, &mut a.v, &mut a.o];
        match &mut self.mlp {
            Mlp::Gated { gate, up, down, .. } => v.extend([gate, up, down]),
            Mlp::Plain { fc1, fc2, .. } => v.extend([fc1, fc2]),
        }
        v
    }
}

#[derive(Clone, Debug)]
pub struct DecoderModel {
    pub dims: Dims,
    pub embed: Embeddings,
    pub blocks: Vec<Block>,
    pub final_norm: Option<Norm>,
    pub project_out: Option<Linear>,
    /// Output projection; for tied models its weight is the token embedding table.
    pub lm_head: Linear,
    pub tied: bool,
    pub device: Device,
}

impl DecoderModel {
    pub fn attn_ctx(&self, seq_len: usize) -> Result<AttnCtx> {
        let first = &self.blocks[0].attn;
        AttnCtx::new(seq_len, first.groups(), first.rope.as_ref(), &self.device)
    }

    /// Check that a batch of token ids fits the model.
    pub fn check_input(&self, ids: &Tensor) -> Result<()> {
        let (_, t) = ids.dims2()?;
        if t == 0 {
            fail!(Input, "empty input sequence");
        }
        if t > self.dims.max_positions {
            fail!(
                Usage,
                "sequence of {t} tokens is longer than the model allows ({} positions)",
                self.dims.max_positions
            );
        }
        Ok(())
    }

    /// Hidden states after the last block (before the final norm): `[B, T, hidden]`.
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        crate::kernels::on_workers(&self.device, || self.hidden_here(ids))
    }

    fn hidden_here(&self, ids: &Tensor) -> Result<Tensor> {
        self.check_input(ids)?;
        let (_, t) = ids.dims2()?;
        let ctx = self.attn_ctx(t)?;
        let mut h = self.embed.forward(ids)?;
        for b in &self.blocks {
            h = b.forward(&h, &ctx)?;
        }
        Ok(h)
    }

    /// Final norm, `project_out` and the LM head: `[B, T, hidden]` → `[B, T, vocab]`.
    pub fn head(&self, h: &Tensor) -> Result<Tensor> {
        crate::kernels::on_workers(&self.device, || self.head_here(h))
    }

    fn head_here(&self, h: &Tensor) -> Result<Tensor> {
        let mut h = match &self.final_norm {
            Some(n) => n.forward(h)?,
            None => h.clone(),
        };
        if let Some(p) = &self.project_out {
            h = p.forward(&h)?;
        }
        self.lm_head.forward(&h)
    }

    /// Logits for every position: `ids` `[B, T]` (u32) → `[B, T, vocab]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.head(&self.hidden(ids)?)
    }

    /// Run prompts `[B, T]` (all of length T) and return the last position's logits `[B, V]`
    /// with the key/value caches for decoding.
    pub fn prefill(&self, ids: &Tensor) -> Result<(Tensor, Vec<KvCache>)> {
        crate::kernels::on_workers(&self.device, || self.prefill_here(ids))
    }

    fn prefill_here(&self, ids: &Tensor) -> Result<(Tensor, Vec<KvCache>)> {
        self.check_input(ids)?;
        let (_, t) = ids.dims2()?;
        let ctx = self.attn_ctx(t)?;
        let mut h = self.embed.forward(ids)?;
        let mut caches = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let (y, sv) = b.forward_t(&h, &ctx, true)?;
            let sv = sv.expect("kept");
            caches.push(KvCache {
                k: sv.attn.k,
                v: sv.attn.v,
            });
            h = y;
        }
        let last = self.head_here(&h.narrow(1, t - 1, 1)?)?.squeeze(1)?;
        Ok((last, caches))
    }

    /// Decode one token per sequence (`tokens`: `[B]`) at position `pos`; returns `[B, V]`.
    pub fn step(&self, tokens: &Tensor, caches: &mut [KvCache], pos: usize) -> Result<Tensor> {
        crate::kernels::on_workers(&self.device, || self.step_here(tokens, caches, pos))
    }

    fn step_here(&self, tokens: &Tensor, caches: &mut [KvCache], pos: usize) -> Result<Tensor> {
        if pos >= self.dims.max_positions {
            fail!(
                Usage,
                "decoding past the model's {} positions",
                self.dims.max_positions
            );
        }
        let b = tokens.dims1()?;
        let mut h = self.embed.forward_at(&tokens.reshape((b, 1))?, pos)?;
        let tables = match &self.blocks[0].attn.rope {
            Some(r) => Some(r.tables_from(pos, 1, &self.device)?),
            None => None,
        };
        for (blk, cache) in self.blocks.iter().zip(caches.iter_mut()) {
            h = blk.forward_step(&h, cache, tables.as_ref().map(|(c, s)| (c, s)))?;
        }
        self.head_here(&h)?.squeeze(1).map_err(Into::into)
    }

    /// Every prunable linear layer (inside the decoder blocks), block by block.
    pub fn linears(&self) -> Vec<&Linear> {
        self.blocks.iter().flat_map(|b| b.linears()).collect()
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| b.linears_mut())
            .collect()
    }

    /// Parameter count with a tied embedding counted once.
    pub fn parameter_count(&self) -> usize {
        let lin =
            |l: &Linear| l.weight.elem_count() + l.bias.as_ref().map_or(0, |b| b.elem_count());
        let norm = |n: &Norm| match n {
            Norm::Rms { weight, .. } => weight.elem_count(),
            Norm::Layer { weight, bias, .. } => weight.elem_count() + bias.elem_count(),
        };
        let mut n = self.embed.tokens.elem_count();
        if let Some((p, _)) = &self.embed.positions {
            n += p.elem_count();
        }
        if let Some(p) = &self.embed.project_in {
            n += lin(p);
        }
        for b in &self.blocks {
            n += b.linears().into_iter().map(lin).sum::<usize>();
            n += norm(&b.attn_norm) + norm(&b.mlp_norm);
        }
        if let Some(f) = &self.final_norm {
            n += norm(f);
        }
        if let Some(p) = &self.project_out {
            n += lin(p);
        }
        if !self.tied {
            n += lin(&self.lm_head);
        }
        n
    }
}

/// Helpers for reading `config.json` fields with clear errors.
pub(crate) mod cfg {
    use crate::fail;
    use anyhow::Result;
    use serde_json::Value;

    pub fn size(c: &Value, key: &str) -> Result<usize> {
        match c.get(key) {
            None | Some(Value::Null) => fail!(Input, "config.json: missing \"{key}\""),
            Some(v) => match v.as_u64() {
                Some(0) => fail!(Input, "config.json: \"{key}\" must be positive, got 0"),
                Some(n) if n <= (1 << 32) => Ok(n as usize),
                _ => fail!(
                    Input,
                    "config.json: \"{key}\" must be a positive integer, got {v}"
                ),
            },
        }
    }

    pub fn size_or(c: &Value, key: &str, default: usize) -> Result<usize> {
        match c.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => size(c, key),
        }
    }

    pub fn float_or(c: &Value, key: &str, default: f64) -> Result<f64> {
        match c.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => fail!(
                    Input,
                    "config.json: \"{key}\" must be a positive number, got {v}"
                ),
            },
        }
    }

    pub fn bool_or(c: &Value, key: &str, default: bool) -> Result<bool> {
        match c.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => fail!(
                Input,
                "config.json: \"{key}\" must be true or false, got {v}"
            ),
        }
    }

    pub fn str_or<'a>(c: &'a Value, key: &str, default: &'a str) -> Result<&'a str> {
        match c.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::String(s)) => Ok(s),
            Some(v) => fail!(Input, "config.json: \"{key}\" must be a string, got {v}"),
        }
    }
}
