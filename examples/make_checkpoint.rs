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
use serde_json::{json, Map, Value};
use sparc3::util::Rng;
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// Splits the tensors, in checkpoint order, into shards of at most `max` data bytes (a tensor
/// bigger than `max` gets a shard of its own, as transformers does).
fn plan_shards(tensors: &[Tensor], width: usize, max: u64) -> Vec<std::ops::Range<usize>> {
    let mut shards = vec![];
    let (mut begin, mut size) = (0, 0u64);
    for (i, t) in tensors.iter().enumerate() {
        let b = (t.numel() * width) as u64;
        if i > begin && size + b > max {
            shards.push(begin..i);
            (begin, size) = (i, 0);
        }
        size += b;
    }
    shards.push(begin..tensors.len());
    shards
}

/// Writes the shards (and the index when there are several); returns the data bytes.
fn write_weights(tensors: &[Tensor], args: &Args, dir: &Path) -> Result<u64> {
    let width = args.dtype.size();
    let shards = plan_shards(tensors, width, parse_size(&args.shard_size)?);
    let total: u64 = tensors.iter().map(|t| (t.numel() * width) as u64).sum();
    let mut weight_map = Map::new();
    let mut progress = Progress {
        done: 0,
        total,
        tensors: 0,
        count: tensors.len(),
    };
    for (k, range) in shards.iter().enumerate() {
        let file = if shards.len() == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", k + 1, shards.len())
        };
        let part = &tensors[range.clone()];
        write_shard(&dir.join(&file), part, args, &mut progress)?;
        for t in part {
            weight_map.insert(t.name.clone(), json!(file));
        }
        progress.show(Some(&format!("wrote {file}")));
    }
    if shards.len() > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    Ok(total)
}

/// Tensors and bytes written so far, shown on stderr.
struct Progress {
    done: u64,
    total: u64,
    tensors: usize,
    count: usize,
}

impl Progress {
    /// Rewrites the status line on a terminal; ends it with `note` (always shown) if given.
    fn show(&self, note: Option<&str>) {
        let tty = std::io::stderr().is_terminal();
        let (done, total) = (self.done as f64 / 1e9, self.total as f64 / 1e9);
        let text = format!(
            "[{}/{} tensors] {done:.2}/{total:.2} GB",
            self.tensors, self.count
        );
        match note {
            Some(n) => eprintln!("{}{text} {n}", if tty { "\r" } else { "" }),
            None if tty => eprint!("\r{text}"),
            None => {}
        }
    }
}

/// The safetensors header: u64 LE length, then the JSON padded with spaces to 8 bytes.
fn header(tensors: &[Tensor], dtype: DType) -> Result<Vec<u8>> {
    let mut h = Map::new();
    h.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0;
    for t in tensors {
        let end = offset + t.numel() * dtype.size();
        let entry =
            json!({"dtype": dtype.safetensors(), "shape": t.shape, "data_offsets": [offset, end]});
        h.insert(t.name.clone(), entry);
        offset = end;
    }
    let mut text = serde_json::to_vec(&h)?;
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    Ok(out)
}

/// One independently seeded run of at most CHUNK elements of a tensor.
struct Piece {
    tensor: usize,
    chunk: usize,
    len: usize,
}

/// The pieces of `tensors` in file order, grouped into batches of about GROUP chunks. Batches
/// span tensor boundaries so that the many small tensors still keep every core busy.
fn batches(tensors: &[Tensor]) -> Vec<Vec<Piece>> {
    let (mut out, mut batch, mut size) = (vec![], vec![], 0);
    for (tensor, t) in tensors.iter().enumerate() {
        let n = t.numel();
        for chunk in 0..n.div_ceil(CHUNK) {
            let len = (n - chunk * CHUNK).min(CHUNK);
            batch.push(Piece { tensor, chunk, len });
            size += len;
            if size >= GROUP * CHUNK {
                out.push(std::mem::take(&mut batch));
                size = 0;
            }
        }
    }
    out.push(batch);
    out
}

/// Streams one shard: the header, then the batches, generating the next batch on the rayon
/// pool while the current one is written.
fn write_shard(
    path: &Path,
    tensors: &[Tensor],
    args: &Args,
    progress: &mut Progress,
) -> Result<()> {
    let mut file = BufWriter::with_capacity(1 << 22, File::create(path)?);
    file.write_all(&header(tensors, args.dtype)?)?;
    let hashes: Vec<u64> = tensors.iter().map(|t| fnv1a(t.name.as_bytes())).collect();
    let (mut pending, mut next) = (vec![], vec![]);
    for batch in batches(tensors) {
        let len: usize = batch.iter().map(|p| p.len).sum();
        next.resize(len * args.dtype.size(), 0);
        let (written, ()) = rayon::join(
            || file.write_all(&pending),
            || fill(&mut next, &batch, tensors, &hashes, args),
        );
        written?;
        progress.done += pending.len() as u64;
        std::mem::swap(&mut pending, &mut next);
        let last = |p: &Piece| (p.chunk + 1) * CHUNK >= tensors[p.tensor].numel();
        progress.tensors += batch.iter().filter(|p| last(p)).count();
        progress.show(None);
    }
    file.write_all(&pending)?;
    progress.done += pending.len() as u64;
    file.flush()?;
    Ok(())
}

/// Fills `buf` with the pieces of `batch`, in parallel, each from its own stream.
fn fill(buf: &mut [u8], batch: &[Piece], tensors: &[Tensor], hashes: &[u64], args: &Args) {
    let mut rest = buf;
    let mut slices = Vec::with_capacity(batch.len());
    for p in batch {
        let (head, tail) = rest.split_at_mut(p.len * args.dtype.size());
        slices.push(head);
        rest = tail;
    }
    slices.into_par_iter().zip(batch).for_each(|(out, p)| {
        // Consecutive SplitMix outputs: well-mixed, independent seeds per chunk.
        let base = Rng::new(args.seed ^ hashes[p.tensor]).next_u64();
        let seed = Rng::new(base.wrapping_add(p.chunk as u64)).next_u64();
        fill_chunk(out, tensors[p.tensor].init, args.dtype, Rng::new(seed));
    });
}

fn fill_chunk(out: &mut [u8], init: Init, dtype: DType, mut rng: Rng) {
    let width = dtype.size();
    match init {
        Init::Normal => {
            for pair in out.chunks_mut(2 * width) {
                let (a, b) = normal_pair(&mut rng);
                dtype.put(a * INIT_STD, &mut pair[..width]);
                if pair.len() == 2 * width {
                    dtype.put(b * INIT_STD, &mut pair[width..]);
                }
            }
        }
        Init::Norm => {
            for x in out.chunks_exact_mut(width) {
                let u = (rng.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
                dtype.put(1.0 + NORM_JITTER * (2.0 * u - 1.0), x);
            }
        }
    }
}

/// Two standard normals by Marsaglia's polar form of Box–Muller: exact like the trigonometric
/// form, but one `ln` per pair and no sin/cos (measured 1.45x faster end to end).
#[inline(always)]
fn normal_pair(rng: &mut Rng) -> (f32, f32) {
    const SCALE: f32 = 1.0 / (1u64 << 31) as f32;
    loop {
        let bits = rng.next_u64();
        let x = (bits >> 32) as i32 as f32 * SCALE;
        let y = bits as u32 as i32 as f32 * SCALE;
        let s = x * x + y * y;
        if s < 1.0 && s > 0.0 {
            let f = (-2.0 * s.ln() / s).sqrt();
            return (x * f, y * f);
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Ids of the tokens to use as bos/eos: the first of a few conventional names the tokenizer
/// has below `vocab` (SmolLM2: <|im_start|> 1, <|im_end|> 2), else 0.
fn special_ids(tok: &Value, vocab: u64) -> (u64, u64) {
    let find = |n: &&str| token_id(tok, n).filter(|&i| i < vocab);
    let id = |names: &[&str]| names.iter().find_map(find).unwrap_or(0);
    let bos = id(&["<|begin_of_text|>", "<s>", "<|im_start|>", "<|endoftext|>"]);
    let eos = id(&["<|end_of_text|>", "</s>", "<|im_end|>", "<|endoftext|>"]);
    (bos, eos)
}

fn token_id(tok: &Value, content: &str) -> Option<u64> {
    let added = tok["added_tokens"].as_array().into_iter().flatten();
    let mut ids = added
        .filter(|t| t["content"] == content)
        .filter_map(|t| t["id"].as_u64());
    ids.next()
        .or_else(|| tok["model"]["vocab"][content].as_u64())
}

/// Max id + 1 over the model vocabulary and the added tokens.
fn tokenizer_vocab(tok: &Value) -> u64 {
    let model = tok["model"]["vocab"].as_object().into_iter().flatten();
    let added = tok["added_tokens"].as_array().into_iter().flatten();
    let ids = model.map(|(_, id)| id).chain(added.map(|t| &t["id"]));
    ids.filter_map(Value::as_u64).max().map_or(0, |i| i + 1)
}

/// Ships the tokenizer (truncated to `vocab` when it has more ids) and its side files, and
/// checks that it loads and encodes within the vocabulary.
fn write_tokenizer(mut tok: Value, src: &Path, vocab: usize, dir: &Path) -> Result<()> {
    let truncated = tokenizer_vocab(&tok) > vocab as u64;
    if truncated {
        truncate_bpe(&mut tok, vocab as u64)?;
    }
    let dest = dir.join("tokenizer.json");
    fs::write(&dest, serde_json::to_string(&tok)?)?;
    let loaded = tokenizers::Tokenizer::from_file(&dest).map_err(anyhow::Error::msg)?;
    let enc = loaded
        .encode(SAMPLE_TEXT, false)
        .map_err(anyhow::Error::msg)?;
    let ids = enc.get_ids();
    let ok = !ids.is_empty() && ids.iter().all(|&i| (i as usize) < vocab);
    ensure!(
        ok,
        "the written tokenizer encodes a sample to {ids:?} (vocab {vocab})"
    );
    let src_dir = src.parent().unwrap_or(Path::new("."));
    for side in ["tokenizer_config.json", "special_tokens_map.json"] {
        if src_dir.join(side).is_file() {
            // read + write rather than copy: a read-only source must not make a read-only copy.
            fs::write(dir.join(side), fs::read(src_dir.join(side))?)?;
        }
    }
    let config = dir.join("tokenizer_config.json");
    if truncated && config.is_file() {
        // transformers would re-add tokens listed here but gone from the vocabulary.
        let mut c = read_json(&config)?;
        if let Some(m) = c
            .get_mut("added_tokens_decoder")
            .and_then(Value::as_object_mut)
        {
            m.retain(|id, _| id.parse::<u64>().is_ok_and(|i| i < vocab as u64));
        }
        write_json(&config, &c)?;
    }
    Ok(())
}

/// Keeps the BPE vocabulary entries with id < vocab, the merges whose parts and result all
/// survive, and the added tokens with id < vocab.
fn truncate_bpe(tok: &mut Value, vocab: u64) -> Result<()> {
    let model = tok["model"]
        .as_object_mut()
        .context("tokenizer.json: no model")?;
    ensure!(
        model.get("type") == Some(&json!("BPE")),
        "can only truncate a BPE tokenizer"
    );
    let entries = model
        .get_mut("vocab")
        .and_then(Value::as_object_mut)
        .context("no model.vocab")?;
    entries.retain(|_, id| id.as_u64().is_some_and(|i| i < vocab));
    let kept: HashSet<String> = entries.keys().cloned().collect();
    let merges = model
        .get_mut("merges")
        .and_then(Value::as_array_mut)
        .context("no merges")?;
    merges.retain(|m| {
        let parts = match m {
            Value::String(s) => s.split_once(' '),
            Value::Array(a) if a.len() == 2 => a[0].as_str().zip(a[1].as_str()),
            _ => None,
        };
        parts.is_some_and(|(a, b)| {
            kept.contains(a) && kept.contains(b) && kept.contains(&format!("{a}{b}"))
        })
    });
    if let Some(added) = tok["added_tokens"].as_array_mut() {
        added.retain(|t| t["id"].as_u64().is_some_and(|i| i < vocab));
    }
    Ok(())
}
