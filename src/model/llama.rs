//! Llama (and Llama-layout models): RMSNorm, RoPE (default, linear and llama3 scaling), GQA,
//! SwiGLU MLP, tied or untied head. Tensor names follow HF `LlamaForCausalLM`.

use super::cfg;
use super::layers::{Activation, Attention, Embeddings, Linear, Mlp, Norm, Rope};
use super::{Architecture, Block, DecoderModel, Dims, NormPlacement};
use crate::fail;
use crate::model::weights::WeightStore;
use anyhow::Result;
use candle_core::{DType, Tensor};
use serde_json::Value;

pub struct Llama;

/// HF inverse frequencies in f32, with `rope_scaling` applied.
pub fn rope_inv_freq(c: &Value, head_dim: usize) -> Result<Rope> {
    let theta = cfg::float_or(c, "rope_theta", 10000.0)?;
    let mut inv: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let scaling = c.get("rope_scaling").filter(|v| !v.is_null());
    if let Some(s) = scaling {
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let factor = cfg::float_or(s, "factor", 1.0)? as f32;
        match kind {
            "default" => {}
            "linear" => inv.iter_mut().for_each(|f| *f /= factor),
            "llama3" => {
                let low = cfg::float_or(s, "low_freq_factor", 1.0)? as f32;
                let high = cfg::float_or(s, "high_freq_factor", 4.0)? as f32;
                let old = cfg::float_or(s, "original_max_position_embeddings", 8192.0)? as f32;
                if high <= low {
                    fail!(Input, "config.json: rope_scaling high_freq_factor must exceed low_freq_factor");
                }
                let low_wl = old / low;
                let high_wl = old / high;
                for f in inv.iter_mut() {
                    let wl = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wl > low_wl { *f / factor } else { *f };
                    let medium = wl >= high_wl && wl <= low_wl;
                    *f = if medium {
                        let smooth = (old / wl - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
            other => fail!(
                Input,
                "config.json: rope_scaling type '{other}' is not supported (supported: default, linear, llama3)"
            ),
        }
    }
    Ok(Rope {
        inv_freq: inv,
        attention_scaling: 1.0,
    })
}

impl Architecture for Llama {
    fn model_types(&self) -> &'static [&'static str] {
        &["llama"]
    }

    fn build(&self, c: &Value, store: &WeightStore) -> Result<DecoderModel> {
        let cfg = LlamaConfig::parse(c)?;
        let p = if store.contains("model.embed_tokens.weight") {
            "model."
        } else {
            ""
        };
        let w = Weights { store, cfg: &cfg };
        let embed_name = format!("{p}embed_tokens.weight");
        let tokens = store.get(&embed_name, &[cfg.vocab, cfg.hidden])?;
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            blocks.push(w.block(&format!("{p}layers.{i}"))?);
        }
        let lm_head = w.lm_head(&tokens)?;
        Ok(DecoderModel {
            dims: cfg.dims(),
            embed: Embeddings {
                tokens,
                tokens_name: embed_name,
                positions: None,
                positions_name: None,
                project_in: None,
            },
            blocks,
            final_norm: Some(w.rms(format!("{p}norm"))?),
            project_out: None,
            lm_head,
            tied: cfg.tie,
            device: store.device.clone(),
        })
    }
}

/// The sizes and options a Llama config sets.
struct LlamaConfig {
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv: usize,
    vocab: usize,
    hd: usize,
    max_pos: usize,
    eps: f64,
    tie: bool,
    attn_bias: bool,
    mlp_bias: bool,
    act: Activation,
    rope: Rope,
}

impl LlamaConfig {
    fn parse(c: &Value) -> Result<Self> {
        let hidden = cfg::size(c, "hidden_size")?;
        let inter = cfg::size(c, "intermediate_size")?;
        let layers = cfg::size(c, "num_hidden_layers")?;
        let heads = cfg::size(c, "num_attention_heads")?;
        let kv = cfg::size_or(c, "num_key_value_heads", heads)?;
        let vocab = cfg::size(c, "vocab_size")?;
        if c.get("head_dim").is_none_or(|v| v.is_null()) && hidden % heads != 0 {
            fail!(
                Input,
                "config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads}"
            );
        }
        let hd = cfg::size_or(c, "head_dim", hidden / heads)?;
        if heads % kv != 0 {
            fail!(Input, "config.json: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}");
        }
        if hd % 2 != 0 {
            fail!(Input, "config.json: head_dim {hd} must be even for RoPE");
        }
        let max_pos = cfg::size_or(c, "max_position_embeddings", 2048)?;
        let eps = cfg::float_or(c, "rms_norm_eps", 1e-6)?;
        let tie = cfg::bool_or(c, "tie_word_embeddings", false)?;
        let attn_bias = cfg::bool_or(c, "attention_bias", false)?;
        let mlp_bias = cfg::bool_or(c, "mlp_bias", false)?;
        let act = Activation::parse(cfg::str_or(c, "hidden_act", "silu")?).map_err(|e| {
            crate::error::err(crate::error::Kind::Input, format!("config.json: {e}"))
        })?;
        let rope = rope_inv_freq(c, hd)?;
        Ok(Self {
            hidden,
            inter,
            layers,
            heads,
            kv,
            vocab,
            hd,
            max_pos,
            eps,
            tie,
            attn_bias,
            mlp_bias,
            act,
            rope,
        })
    }

    fn dims(&self) -> Dims {
        Dims {
            arch: "llama".into(),
            hidden: self.hidden,
            layers: self.layers,
            heads: self.heads,
            kv_heads: self.kv,
            head_dim: self.hd,
            intermediate: self.inter,
            vocab: self.vocab,
            max_positions: self.max_pos,
        }
    }
}

/// A Llama checkpoint's layers, read from the store with the shapes the config implies.
struct Weights<'a> {
    store: &'a WeightStore,
    cfg: &'a LlamaConfig,
}

impl Weights<'_> {
    fn f32n(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self.store.get(name, shape)?.to_dtype(DType::F32)?)
    }

    /// A linear layer; its bias is required with `bias`, optional otherwise.
    fn linear(&self, name: String, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.store.get(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.f32n(&format!("{name}.bias"), &[out])?)
        } else {
            self.store
                .get_opt(&format!("{name}.bias"), &[out])?
                .map(|t| t.to_dtype(DType::F32))
                .transpose()?
        };
        Ok(Linear::new(name, w, b))
    }

    fn rms(&self, name: String) -> Result<Norm> {
        Ok(Norm::Rms {
            weight: self.f32n(&format!("{name}.weight"), &[self.cfg.hidden])?,
            name,
            eps: self.cfg.eps,
        })
    }

    /// The decoder layer under the name prefix `l`.
    fn block(&self, l: &str) -> Result<Block> {
        let c = self.cfg;
        let (hidden, heads, kv, hd) = (c.hidden, c.heads, c.kv, c.hd);
        let attn = Attention {
            q: self.linear(
                format!("{l}.self_attn.q_proj"),
                heads * hd,
                hidden,
                c.attn_bias,
            )?,
            k: self.linear(
                format!("{l}.self_attn.k_proj"),
                kv * hd,
                hidden,
                c.attn_bias,
            )?,
            v: self.linear(
                format!("{l}.self_attn.v_proj"),
                kv * hd,
                hidden,
                c.attn_bias,
            )?,
            o: self.linear(
                format!("{l}.self_attn.o_proj"),
                hidden,
                heads * hd,
                c.attn_bias,
            )?,
            n_heads: heads,
            n_kv_heads: kv,
            head_dim: hd,
            rope: Some(c.rope.clone()),
            scale: 1.0 / (hd as f64).sqrt(),
        };
        let mlp = Mlp::Gated {
            gate: self.linear(format!("{l}.mlp.gate_proj"), c.inter, hidden, c.mlp_bias)?,
            up: self.linear(format!("{l}.mlp.up_proj"), c.inter, hidden, c.mlp_bias)?,
            down: self.linear(format!("{l}.mlp.down_proj"), hidden, c.inter, c.mlp_bias)?,
            act: c.act,
        };
        Ok(Block {
            attn_norm: self.rms(format!("{l}.input_layernorm"))?,
            attn,
            mlp_norm: self.rms(format!("{l}.post_attention_layernorm"))?,
            mlp,
            placement: NormPlacement::Pre,
        })
    }

    /// The output projection: its own weight, or the token embeddings when tied.
    fn lm_head(&self, tokens: &Tensor) -> Result<Linear> {
        let tie = self.cfg.tie;
        if tie || !self.store.contains("lm_head.weight") {
            if !tie {
                fail!(
                    Input,
                    "checkpoint has no tensor 'lm_head.weight' and tie_word_embeddings is false"
                );
            }
            Ok(Linear::new("lm_head", tokens.clone(), None))
        } else {
            self.linear("lm_head".into(), self.cfg.vocab, self.cfg.hidden, false)
        }
    }
}
