//! GGUF checkpoints (Llama family): dequantized to f32 by candle's reader, tensor names mapped to
//! Hugging Face names, q/k rows un-permuted from llama.cpp's RoPE layout, and an HF-style config
//! derived from the metadata when no `config.json` sits beside the file.

use super::weights::check_finite;
use crate::error::{Kind, Tag};
use crate::fail;
use crate::model::weights::{Stored, WeightStore};
use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use std::path::Path;

/// A candle error's message without the backtrace candle appends when `RUST_BACKTRACE` is set
/// (user-facing errors are one line).
fn candle_msg(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_msg(inner),
        other => other.to_string(),
    }
}

pub fn read_content(path: &Path) -> Result<(Content, std::fs::File)> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))
        .tag(Kind::Input)?;
    let content = Content::read(&mut file).map_err(|e| {
        let msg = candle_msg(&e);
        if let Some(id) = msg.strip_prefix("unknown dtype for tensor ") {
            crate::error::err(
                Kind::Input,
                format!(
                    "{}: unsupported GGUF quantization type id {id} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K)",
                    path.display()
                ),
            )
        } else {
            crate::error::err(Kind::Input, format!("{}: not a readable GGUF file: {msg}", path.display()))
        }
    })?;
    Ok((content, file))
}

fn meta_u(c: &Content, key: &str) -> Option<usize> {
    c.metadata
        .get(key)
        .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
        .map(|x| x as usize)
}

fn meta_f(c: &Content, key: &str) -> Option<f64> {
    c.metadata.get(key).and_then(|v| match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        _ => None,
    })
}

/// An HF `LlamaConfig` JSON derived from GGUF metadata.
pub fn config_from_metadata(path: &Path, c: &Content) -> Result<serde_json::Value> {
    let arch = match c
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
    {
        Some(a) => a.clone(),
        None => fail!(
            Input,
            "{}: GGUF metadata has no general.architecture",
            path.display()
        ),
    };
    if arch != "llama" {
        fail!(
            Input,
            "{}: GGUF architecture '{arch}' is not supported (supported: llama)",
            path.display()
        );
    }
    let need = |k: &str| -> Result<usize> {
        match meta_u(c, &format!("llama.{k}")) {
            Some(v) => Ok(v),
            None => fail!(Input, "{}: GGUF metadata lacks llama.{k}", path.display()),
        }
    };
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let vocab = meta_u(c, "llama.vocab_size")
        .or_else(|| match c.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => Some(a.len()),
            _ => None,
        })
        .or_else(|| {
            c.tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims()[0])
        });
    let Some(vocab) = vocab else {
        fail!(
            Input,
            "{}: cannot tell the vocabulary size from the GGUF metadata",
            path.display()
        );
    };
    let head_dim = meta_u(c, "llama.rope.dimension_count").unwrap_or(hidden / heads.max(1));
    let mut cfg = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": meta_u(c, "llama.attention.head_count_kv").unwrap_or(heads),
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": meta_u(c, "llama.context_length").unwrap_or(2048),
        "rms_norm_eps": meta_f(c, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        "rope_theta": meta_f(c, "llama.rope.freq_base").unwrap_or(10000.0),
        "tie_word_embeddings": !c.tensor_infos.contains_key("output.weight"),
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    if let Some(b) = meta_u(c, "tokenizer.ggml.bos_token_id") {
        cfg["bos_token_id"] = json!(b);
    }
    if let Some(e) = meta_u(c, "tokenizer.ggml.eos_token_id") {
        cfg["eos_token_id"] = json!(e);
    }
    if let Some(f) = meta_f(c, "llama.rope.scaling.factor") {
        let kind = c
            .metadata
            .get("llama.rope.scaling.type")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| "linear".into());
        if kind != "none" {
            cfg["rope_scaling"] = json!({"rope_type": kind, "factor": f});
        }
    }
    Ok(cfg)
}

/// HF name for a GGUF tensor name, or None for tensors we do not use (e.g. rope_freqs).
fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undo llama.cpp's q/k permutation: rows (head, i, two) back to HF's (head, two, i).
fn unpermute(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = t.dims2()?;
    if heads == 0 || out % (2 * heads) != 0 {
        anyhow::bail!("cannot un-permute a [{out}, {inp}] tensor over {heads} heads");
    }
    Ok(t.reshape((heads, out / heads / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Dequantize every used tensor into the store under its HF name.
pub fn load_gguf(
    store: &mut WeightStore,
    path: &Path,
    content: &Content,
    file: &mut std::fs::File,
    cfg: &serde_json::Value,
) -> Result<()> {
    let heads = cfg["num_attention_heads"].as_u64().unwrap_or(0) as usize;
    let kv_heads = cfg["num_key_value_heads"]
        .as_u64()
        .map(|x| x as usize)
        .unwrap_or(heads);
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    for name in names {
        let Some(hf) = hf_name(name) else { continue };
        let q = content.tensor(file, name, &Device::Cpu).map_err(|e| {
            crate::error::err(
                Kind::Input,
                format!(
                    "{}: reading tensor '{name}': {}",
                    path.display(),
                    candle_msg(&e)
                ),
            )
        })?;
        let disk = match q.dtype() {
            candle_core::quantized::GgmlDType::F16 => DType::F16,
            candle_core::quantized::GgmlDType::BF16 => DType::BF16,
            _ => DType::F32,
        };
        let mut t = q.dequantize(&Device::Cpu).map_err(|e| {
            crate::error::err(
                Kind::Input,
                format!(
                    "{}: dequantizing '{name}': {}",
                    path.display(),
                    candle_msg(&e)
                ),
            )
        })?;
        if hf.ends_with("q_proj.weight") {
            t = unpermute(&t, heads)
                .with_context(|| format!("{}: '{name}'", path.display()))
                .tag(Kind::Input)?;
        } else if hf.ends_with("k_proj.weight") {
            t = unpermute(&t, kv_heads)
                .with_context(|| format!("{}: '{name}'", path.display()))
                .tag(Kind::Input)?;
        }
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        check_finite(path, name, &v)?;
        let t = t
            .to_device(&store.device)?
            .to_dtype(store.dtype_for(disk))?;
        store.insert(
            hf,
            Stored {
                tensor: t,
                file: path.to_path_buf(),
                disk_dtype: disk,
            },
        )?;
    }
    Ok(())
}
