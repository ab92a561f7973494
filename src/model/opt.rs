//! OPT: learned positions (offset 2), pre- or post-LayerNorm (`do_layer_norm_before`),
//! `project_in`/`project_out` when `word_embed_proj_dim` differs from the hidden size, biases,
//! ReLU MLP, tied head. Tensor names follow HF `OPTForCausalLM`.

use super::cfg;
use super::layers::{Activation, Attention, Embeddings, Linear, Mlp, Norm};
use super::{Architecture, Block, DecoderModel, Dims, NormPlacement};
use crate::fail;
use crate::model::weights::WeightStore;
use anyhow::Result;
use candle_core::{DType, Tensor};
use serde_json::Value;

pub struct Opt;

/// OPT stores position rows shifted by two (a fairseq legacy).
pub const POSITION_OFFSET: usize = 2;

impl Architecture for Opt {
    fn model_types(&self) -> &'static [&'static str] {
        &["opt"]
    }

    fn build(&self, c: &Value, store: &WeightStore) -> Result<DecoderModel> {
        let cfg = OptConfig::parse(c)?;
        let p = if store.contains("model.decoder.embed_tokens.weight") {
            "model.decoder."
        } else {
            "decoder."
        };
        let w = Weights { store, cfg: &cfg };
        let (hidden, proj_dim) = (cfg.hidden, cfg.proj_dim);
        let embed_name = format!("{p}embed_tokens.weight");
        let tokens = store.get(&embed_name, &[cfg.vocab, proj_dim])?;
        let pos_name = format!("{p}embed_positions.weight");
        let positions = store.get(&pos_name, &[cfg.max_pos + POSITION_OFFSET, hidden])?;
        let (project_in, project_out) = if proj_dim != hidden {
            (
                Some(w.linear(format!("{p}project_in"), hidden, proj_dim, false)?),
                Some(w.linear(format!("{p}project_out"), proj_dim, hidden, false)?),
            )
        } else {
            (None, None)
        };
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            blocks.push(w.block(&format!("{p}layers.{i}"))?);
        }
        let final_norm = if cfg.pre && !cfg.remove_final {
            Some(w.ln(format!("{p}final_layer_norm"))?)
        } else {
            None
        };
        let lm_head = if !cfg.tie && store.contains("lm_head.weight") {
            w.linear("lm_head".into(), cfg.vocab, proj_dim, false)?
        } else {
            Linear::new("lm_head", tokens.clone(), None)
        };
        Ok(DecoderModel {
            dims: cfg.dims(),
            embed: Embeddings {
                tokens,
                tokens_name: embed_name,
                positions: Some((positions, POSITION_OFFSET)),
                positions_name: Some(pos_name),
                project_in,
            },
            blocks,
            final_norm,
            project_out,
            lm_head,
            tied: cfg.tie || !store.contains("lm_head.weight"),
            device: store.device.clone(),
        })
    }
}

/// The sizes and options an OPT config sets.
struct OptConfig {
    hidden: usize,
    ffn: usize,
    layers: usize,
    heads: usize,
    vocab: usize,
    max_pos: usize,
    proj_dim: usize,
    /// Pre-LayerNorm (`do_layer_norm_before`).
    pre: bool,
    remove_final: bool,
    bias: bool,
    affine: bool,
    tie: bool,
    act: Activation,
    hd: usize,
}

impl OptConfig {
    fn parse(c: &Value) -> Result<Self> {
        let hidden = cfg::size(c, "hidden_size")?;
        let ffn = cfg::size(c, "ffn_dim")?;
        let layers = cfg::size(c, "num_hidden_layers")?;
        let heads = cfg::size(c, "num_attention_heads")?;
        let vocab = cfg::size(c, "vocab_size")?;
        let max_pos = cfg::size(c, "max_position_embeddings")?;
        let proj_dim = cfg::size_or(c, "word_embed_proj_dim", hidden)?;
        let pre = cfg::bool_or(c, "do_layer_norm_before", true)?;
        let remove_final = cfg::bool_or(c, "_remove_final_layer_norm", false)?;
        let bias = cfg::bool_or(c, "enable_bias", true)?;
        let affine = cfg::bool_or(c, "layer_norm_elementwise_affine", true)?;
        let tie = cfg::bool_or(c, "tie_word_embeddings", true)?;
        let act =
            Activation::parse(cfg::str_or(c, "activation_function", "relu")?).map_err(|e| {
                crate::error::err(crate::error::Kind::Input, format!("config.json: {e}"))
            })?;
        if hidden % heads != 0 {
            fail!(
                Input,
                "config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads}"
            );
        }
        Ok(Self {
            hidden,
            ffn,
            layers,
            heads,
            vocab,
            max_pos,
            proj_dim,
            pre,
            remove_final,
            bias,
            affine,
            tie,
            act,
            hd: hidden / heads,
        })
    }

    fn dims(&self) -> Dims {
        Dims {
            arch: "opt".into(),
            hidden: self.hidden,
            layers: self.layers,
            heads: self.heads,
            kv_heads: self.heads,
            head_dim: self.hd,
            intermediate: self.ffn,
            vocab: self.vocab,
            max_positions: self.max_pos,
        }
    }
}

/// An OPT checkpoint's layers, read from the store with the shapes the config implies.
struct Weights<'a> {
    store: &'a WeightStore,
    cfg: &'a OptConfig,
}

impl Weights<'_> {
    /// A linear layer, with its bias when `has_bias`.
    fn linear(&self, name: String, out: usize, inp: usize, has_bias: bool) -> Result<Linear> {
        let w = self.store.get(&format!("{name}.weight"), &[out, inp])?;
        let b = if has_bias {
            Some(
                self.store
                    .get(&format!("{name}.bias"), &[out])?
                    .to_dtype(DType::F32)?,
            )
        } else {
            None
        };
        Ok(Linear::new(name, w, b))
    }

    /// A LayerNorm (unit scale and zero shift without `layer_norm_elementwise_affine`).
    fn ln(&self, name: String) -> Result<Norm> {
        let (store, hidden) = (self.store, self.cfg.hidden);
        let (weight, b) = if self.cfg.affine {
            (
                store
                    .get(&format!("{name}.weight"), &[hidden])?
                    .to_dtype(DType::F32)?,
                store
                    .get(&format!("{name}.bias"), &[hidden])?
                    .to_dtype(DType::F32)?,
            )
        } else {
            (
                Tensor::ones(hidden, DType::F32, &store.device)?,
                Tensor::zeros(hidden, DType::F32, &store.device)?,
            )
        };
        Ok(Norm::Layer {
            name,
            weight,
            bias: b,
            eps: 1e-5,
        })
    }

    /// The decoder layer under the name prefix `l`.
    fn block(&self, l: &str) -> Result<Block> {
        let c = self.cfg;
        let (hidden, bias) = (c.hidden, c.bias);
        let attn = Attention {
            q: self.linear(format!("{l}.self_attn.q_proj"), hidden, hidden, bias)?,
            k: self.linear(format!("{l}.self_attn.k_proj"), hidden, hidden, bias)?,
            v: self.linear(format!("{l}.self_attn.v_proj"), hidden, hidden, bias)?,
            o: self.linear(format!("{l}.self_attn.out_proj"), hidden, hidden, bias)?,
            n_heads: c.heads,
            n_kv_heads: c.heads,
            head_dim: c.hd,
            rope: None,
            scale: 1.0 / (c.hd as f64).sqrt(),
        };
        let mlp = Mlp::Plain {
            fc1: self.linear(format!("{l}.fc1"), c.ffn, hidden, bias)?,
            fc2: self.linear(format!("{l}.fc2"), hidden, c.ffn, bias)?,
            act: c.act,
        };
        Ok(Block {
            attn_norm: self.ln(format!("{l}.self_attn_layer_norm"))?,
            attn,
            mlp_norm: self.ln(format!("{l}.final_layer_norm"))?,
            mlp,
            placement: if c.pre {
                NormPlacement::Pre
            } else {
                NormPlacement::Post
            },
        })
    }
}
