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
        let hd = hidden / heads;

        let p = if store.contains("model.decoder.embed_tokens.weight") {
            "model.decoder."
        } else {
            "decoder."
        };
        let linear = |name: String, out: usize, inp: usize, has_bias: bool| -> Result<Linear> {
            let w = store.get(&format!("{name}.weight"), &[out, inp])?;
            let b = if has_bias {
                Some(
                    store
                        .get(&format!("{name}.bias"), &[out])?
                        .to_dtype(DType::F32)?,
                )
            } else {
                None
            };
            Ok(Linear::new(name, w, b))
        };
        let ln = |name: String| -> Result<Norm> {
            let (weight, b) = if affine {
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
        };

        let embed_name = format!("{p}embed_tokens.weight");
        let tokens = store.get(&embed_name, &[vocab, proj_dim])?;
        let pos_name = format!("{p}embed_positions.weight");
        let positions = store.get(&pos_name, &[max_pos + POSITION_OFFSET, hidden])?;
        let (project_in, project_out) = if proj_dim != hidden {
            (
                Some(linear(format!("{p}project_in"), hidden, proj_dim, false)?),
                Some(linear(format!("{p}project_out"), proj_dim, hidden, false)?),
            )
        } else {
            (None, None)
        };
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let l = format!("{p}layers.{i}");
            let attn = Attention {
                q: linear(format!("{l}.self_attn.q_proj"), hidden, hidden, bias)?,
                k: linear(format!("{l}.self_attn.k_proj"), hidden, hidden, bias)?,
                v: linear(format!("{l}.self_attn.v_proj"), hidden, hidden, bias)?,
                o: linear(format!("{l}.self_attn.out_proj"), hidden, hidden, bias)?,
                n_heads: heads,
                n_kv_heads: heads,
                head_dim: hd,
                rope: None,
                scale: 1.0 / (hd as f64).sqrt(),
            };
            let mlp = Mlp::Plain {
                fc1: linear(format!("{l}.fc1"), ffn, hidden, bias)?,
                fc2: linear(format!("{l}.fc2"), hidden, ffn, bias)?,
                act,
            };
            blocks.push(Block {
                attn_norm: ln(format!("{l}.self_attn_layer_norm"))?,
                attn,
                mlp_norm: ln(format!("{l}.final_layer_norm"))?,
                mlp,
                placement: if pre {
                    NormPlacement::Pre
                } else {
                    NormPlacement::Post
                },
            });
        }
        let final_norm = if pre && !remove_final {
            Some(ln(format!("{p}final_layer_norm"))?)
        } else {
            None
        };
        let lm_head = if !tie && store.contains("lm_head.weight") {
            linear("lm_head".into(), vocab, proj_dim, false)?
        } else {
            Linear::new("lm_head", tokens.clone(), None)
        };
        Ok(DecoderModel {
            dims: Dims {
                arch: "opt".into(),
                hidden,
                layers,
                heads,
                kv_heads: heads,
                head_dim: hd,
                intermediate: ffn,
                vocab,
                max_positions: max_pos,
            },
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
            tied: tie || !store.contains("lm_head.weight"),
            device: store.device.clone(),
        })
    }
}
