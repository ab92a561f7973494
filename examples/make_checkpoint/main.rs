//! Writes a random-initialised decoder-only checkpoint in Hugging Face layout, offline, for
//! scale testing (no download needed to try an 8B-shaped model).
//!
//! ```text
//! cargo run --release --example make_checkpoint -- --shape tinyllama-1.1b --out /tmp/ckpt/tinyllama \
//!     [--seed 0] [--dtype bf16|f16|f32] [--shard-size 5GB] [--tokenizer PATH] [--vocab N] [--force]
//! cargo run --release --example make_checkpoint -- --config my/config.json --out DIR
//! cargo run --release --example make_checkpoint -- --list
//! ```
//!
//! Init: linear, embedding and bias weights N(0, 0.02²) (transformers' `initializer_range`),
//! by Marsaglia's polar form of Box–Muller; RMSNorm weights 1 + U(-0.1, 0.1), jittered
//! so that a norm is not a no-op an attribution could shortcut. Every 1M-element chunk of every
//! tensor draws from its own stream seeded by (seed, tensor name, chunk index): chunks are made
//! in parallel and the bytes do not depend on the thread count.
//!
//! Memory stays near 130 MB whatever the model (two 32 MB batch buffers, the tokenizer): each
//! shard's header is computed from the shapes up front, then tensors are streamed batch by batch,
//! the next batch generated while the previous one is written.

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::fs::{self};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod tokenizer;
mod weights;
use tokenizer::*;
use weights::*;

/// Elements per independently seeded chunk.
const CHUNK: usize = 1 << 20;
/// Chunks generated together and handed to the writer at once (16M elements, 32 MB in bf16).
const GROUP: usize = 16;
const INIT_STD: f32 = 0.02;
const NORM_JITTER: f32 = 0.1;
const SAMPLE_TEXT: &str = "The quick brown fox jumps over the lazy dog. 1234 <|im_start|>user\nHi!";

#[derive(Parser)]
#[command(about = "Write a random-initialised Llama/Qwen2-shaped checkpoint in HF layout")]
struct Args {
    /// Named shape (see --list).
    #[arg(long, conflicts_with = "config", required_unless_present_any = ["config", "list"])]
    shape: Option<String>,
    /// A Llama/Qwen2/Mistral-style config.json to follow instead of a named shape.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory (refused if it exists, unless --force).
    #[arg(long, required_unless_present = "list")]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = DType::Bf16)]
    dtype: DType,
    /// Largest shard, e.g. 5GB, 2GB, 500MB, 1GiB (GB = 10^9, as in transformers).
    #[arg(long, default_value = "5GB")]
    shard_size: String,
    /// tokenizer.json to ship (truncated if its vocabulary exceeds the model's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Override vocab_size.
    #[arg(long)]
    vocab: Option<usize>,
    /// Replace an existing --out.
    #[arg(long)]
    force: bool,
    /// Print the named shapes and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DType {
    Bf16,
    F16,
    F32,
}

impl DType {
    fn size(self) -> usize {
        [2, 2, 4][self as usize]
    }
    fn safetensors(self) -> &'static str {
        ["BF16", "F16", "F32"][self as usize]
    }
    fn torch(self) -> &'static str {
        ["bfloat16", "float16", "float32"][self as usize]
    }
    #[inline(always)]
    fn put(self, v: f32, out: &mut [u8]) {
        match self {
            DType::Bf16 => out.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            DType::F16 => out.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            DType::F32 => out.copy_from_slice(&v.to_le_bytes()),
        }
    }
}

/// A published architecture: the numbers of its hub config.json.
struct Shape {
    name: &'static str,
    qwen2: bool,
    /// hidden, intermediate, layers, heads, kv heads, head_dim, vocab.
    d: [usize; 7],
    tied: bool,
    rope_theta: f64,
    eps: f64,
    max_pos: usize,
    llama3_rope: bool,
}

#[rustfmt::skip]
const SHAPES: &[Shape] = &[
    Shape { name: "smollm2-360m", qwen2: false, d: [960, 2560, 32, 15, 5, 64, 49152], tied: true,
            rope_theta: 1e5, eps: 1e-5, max_pos: 8192, llama3_rope: false },
    Shape { name: "qwen2.5-0.5b", qwen2: true, d: [896, 4864, 24, 14, 2, 64, 151936], tied: true,
            rope_theta: 1e6, eps: 1e-6, max_pos: 32768, llama3_rope: false },
    Shape { name: "tinyllama-1.1b", qwen2: false, d: [2048, 5632, 22, 32, 4, 64, 32000], tied: false,
            rope_theta: 1e4, eps: 1e-5, max_pos: 2048, llama3_rope: false },
    Shape { name: "llama-3.2-1b", qwen2: false, d: [2048, 8192, 16, 32, 8, 64, 128256], tied: true,
            rope_theta: 5e5, eps: 1e-5, max_pos: 131072, llama3_rope: true },
    Shape { name: "llama-3.2-3b", qwen2: false, d: [3072, 8192, 28, 24, 8, 128, 128256], tied: true,
            rope_theta: 5e5, eps: 1e-5, max_pos: 131072, llama3_rope: true },
    Shape { name: "llama-3-8b", qwen2: false, d: [4096, 14336, 32, 32, 8, 128, 128256], tied: false,
            rope_theta: 5e5, eps: 1e-5, max_pos: 8192, llama3_rope: false },
];

impl Shape {
    /// The full HF config.json, keys sorted as transformers writes them.
    fn config(&self, dtype: DType, bos: u64, eos: u64) -> Value {
        let [hidden, inter, layers, heads, kv, head_dim, vocab] = self.d;
        let mut c = json!({
            "attention_bias": self.qwen2, "attention_dropout": 0.0, "bos_token_id": bos,
            "eos_token_id": eos, "hidden_act": "silu", "hidden_size": hidden,
            "initializer_range": 0.02, "intermediate_size": inter,
            "max_position_embeddings": self.max_pos, "num_attention_heads": heads,
            "num_hidden_layers": layers, "num_key_value_heads": kv,
            "rms_norm_eps": self.eps, "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tied, "torch_dtype": dtype.torch(), "use_cache": true,
            "vocab_size": vocab,
        });
        let extra = if self.qwen2 {
            json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                   "max_window_layers": 21, "sliding_window": 32768, "use_sliding_window": false})
        } else {
            let scaling = self.llama3_rope.then(|| {
                json!({"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"})
            });
            json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                   "head_dim": head_dim, "mlp_bias": false, "pretraining_tp": 1,
                   "rope_scaling": scaling})
        };
        let map = c.as_object_mut().expect("an object");
        map.extend(extra.as_object().expect("an object").clone());
        map.sort_keys();
        c
    }
}

/// What the tensor layout needs from a config.
struct Dims {
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv: usize,
    head_dim: usize,
    vocab: usize,
    tied: bool,
    bias: bool,
}

impl Dims {
    fn from_config(c: &Value) -> Result<Dims> {
        let get = |k: &str| -> Result<usize> {
            let v = c.get(k).and_then(Value::as_u64);
            Ok(v.with_context(|| format!("config.json: no integer `{k}`"))? as usize)
        };
        let (hidden, heads) = (get("hidden_size")?, get("num_attention_heads")?);
        ensure!(heads > 0, "config.json: num_attention_heads is 0");
        ensure!(get("vocab_size")? > 0, "config.json: vocab_size is 0");
        let flag = |k: &str| c.get(k).and_then(Value::as_bool);
        // transformers' Qwen2 always has q/k/v biases, whatever attention_bias says.
        let qwen2 = c.get("model_type").and_then(Value::as_str) == Some("qwen2");
        Ok(Dims {
            hidden,
            inter: get("intermediate_size")?,
            layers: get("num_hidden_layers")?,
            heads,
            kv: get("num_key_value_heads").unwrap_or(heads),
            head_dim: get("head_dim").unwrap_or(hidden / heads),
            vocab: get("vocab_size")?,
            tied: flag("tie_word_embeddings").unwrap_or(false),
            bias: qwen2 || flag("attention_bias").unwrap_or(false),
        })
    }

    fn tensors(&self) -> Vec<Tensor> {
        let (h, f, v) = (self.hidden, self.inter, self.vocab);
        let (q, kv) = (self.heads * self.head_dim, self.kv * self.head_dim);
        let (w, ln) = (Init::Normal, Init::Norm);
        let mut t = vec![];
        let mut add = |name: String, shape: &[usize], init| {
            let shape = shape.to_vec();
            t.push(Tensor { name, shape, init })
        };
        add("model.embed_tokens.weight".into(), &[v, h], w);
        for i in 0..self.layers {
            let p = format!("model.layers.{i}");
            add(format!("{p}.input_layernorm.weight"), &[h], ln);
            for (n, rows) in [("q", q), ("k", kv), ("v", kv)] {
                add(format!("{p}.self_attn.{n}_proj.weight"), &[rows, h], w);
                if self.bias {
                    add(format!("{p}.self_attn.{n}_proj.bias"), &[rows], w);
                }
            }
            add(format!("{p}.self_attn.o_proj.weight"), &[h, q], w);
            add(format!("{p}.post_attention_layernorm.weight"), &[h], ln);
            add(format!("{p}.mlp.gate_proj.weight"), &[f, h], w);
            add(format!("{p}.mlp.up_proj.weight"), &[f, h], w);
            add(format!("{p}.mlp.down_proj.weight"), &[h, f], w);
        }
        add("model.norm.weight".into(), &[h], ln);
        if !self.tied {
            add("lm_head.weight".into(), &[v, h], w);
        }
        t
    }
}

#[derive(Clone, Copy)]
enum Init {
    /// N(0, INIT_STD²).
    Normal,
    /// 1 + U(-NORM_JITTER, NORM_JITTER).
    Norm,
}

struct Tensor {
    name: String,
    shape: Vec<usize>,
    init: Init,
}

impl Tensor {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.list {
        list_shapes();
        return Ok(());
    }
    let out = args.out.clone().context("--out is required")?;
    if out.exists() && !args.force {
        bail!("{} exists (pass --force to replace it)", out.display());
    }
    let name = out
        .file_name()
        .context("--out has no final component")?
        .to_string_lossy();
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp)?;
    let result = write_all(&args, &tmp);
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
        return result;
    }
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("replacing {}", out.display()))?;
    }
    fs::rename(&tmp, &out)?;
    Ok(())
}

fn list_shapes() {
    for s in SHAPES {
        let d = Dims::from_config(&s.config(DType::Bf16, 0, 0)).expect("a valid shape");
        let params: usize = d.tensors().iter().map(Tensor::numel).sum();
        let (b, gb) = (params as f64 / 1e9, params as f64 * 2.0 / 1e9);
        let tied = if d.tied { ", tied" } else { "" };
        println!(
            "{:<15} {b:>6.3}B params {gb:>6.2} GB bf16  hidden {} inter {} layers {} heads {}/{} vocab {}{tied}",
            s.name, d.hidden, d.inter, d.layers, d.heads, d.kv, d.vocab
        );
    }
}

/// Everything that goes into the output directory, written into `dir`.
fn write_all(args: &Args, dir: &Path) -> Result<()> {
    let start = Instant::now();
    let tok_path = args.tokenizer.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/smollm2-135m/tokenizer.json")
    });
    let tokenizer: Value = read_json(&tok_path)?;
    let mut config = match (&args.shape, &args.config) {
        (_, Some(path)) => read_json(path)?,
        (Some(name), None) => {
            let shape = SHAPES.iter().find(|s| s.name == name.as_str());
            let names: Vec<_> = SHAPES.iter().map(|s| s.name).collect();
            let shape = shape.with_context(|| format!("unknown shape {name}; known: {names:?}"))?;
            let vocab = args.vocab.unwrap_or(shape.d[6]) as u64;
            let (bos, eos) = special_ids(&tokenizer, vocab);
            shape.config(args.dtype, bos, eos)
        }
        (None, None) => bail!("pass --shape or --config"),
    };
    let obj = config
        .as_object_mut()
        .context("config.json is not an object")?;
    obj.insert("torch_dtype".into(), json!(args.dtype.torch()));
    if let Some(v) = args.vocab {
        obj.insert("vocab_size".into(), json!(v));
    }
    let dims = Dims::from_config(&config)?;
    write_tokenizer(tokenizer, &tok_path, dims.vocab, dir)?;
    write_json(&dir.join("config.json"), &config)?;
    let generation = json!({"_from_model_config": true, "bos_token_id": config["bos_token_id"],
                            "eos_token_id": config["eos_token_id"]});
    write_json(&dir.join("generation_config.json"), &generation)?;
    let tensors = dims.tensors();
    let bytes = write_weights(&tensors, args, dir)?;
    let params: usize = tensors.iter().map(Tensor::numel).sum();
    println!(
        "{}: {params} params, {bytes} bytes ({}), {} tensors, {:.1} s",
        args.out.as_ref().unwrap().display(),
        args.dtype.torch(),
        tensors.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    fs::write(path, serde_json::to_string_pretty(v)? + "\n")?;
    Ok(())
}

/// "5GB" → 5e9, "500MB", "1GiB", "123" (bytes); decimal units as transformers reads them.
fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_uppercase();
    let digits = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        u => bail!("--shard-size: unknown unit {u:?} in {s:?}"),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("--shard-size: bad number in {s:?}"))?;
    Ok((n * mult as f64) as u64)
}
