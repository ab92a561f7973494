//! Writing a (pruned) model back in Hugging Face layout: `config.json`, tokenizer files,
//! safetensors weights in the input's dtype (or an override), sharded like the input, plus a
//! report. The directory is built under a temporary name beside the output, every file fsynced,
//! then renamed into place; an existing output is only replaced with `force`.
//!
//! The writer takes what it writes ([`Contents`]: the config, the tensors, the model whose
//! linear weights replace them, the tokenizer files).

use crate::error::{self, Kind, Remedy, Setting};
use crate::fail;
use crate::model::weights::WeightStore;
use crate::model::DecoderModel;
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Files besides the weights that make a model directory loadable.
const EXTRA: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "tokenizer.model",
];

/// Canonical form of a path that may not exist yet (its parent must).
fn canonical(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    Some(parent(p).canonicalize().ok()?.join(p.file_name()?))
}

/// Refuse an output directory that exists (without force), is the model's own directory
/// `model_dir`, sits inside it, or would (when replaced) delete one of the inputs.
pub fn check_out(
    out: &Path,
    force: bool,
    model_dir: Option<&Path>,
    inputs: &[PathBuf],
) -> Result<()> {
    let out_c = canonical(out);
    if let (Some(dir), Some(oc)) = (model_dir, out_c.as_ref()) {
        if let Ok(d) = dir.canonicalize() {
            if &d == oc {
                let msg = format!(
                    "{} is the model's own directory; refusing to overwrite the input",
                    out.display()
                );
                return Err(error::about(Kind::Usage, Setting::Out, msg));
            }
            if oc.starts_with(&d) {
                let msg = format!(
                    "{} is inside the model's directory {}; write it elsewhere",
                    out.display(),
                    dir.display()
                );
                return Err(error::about(Kind::Usage, Setting::Out, msg));
            }
            if d.starts_with(oc) {
                let msg = format!(
                    "{} holds the model's directory {}; replacing it would delete the input",
                    out.display(),
                    dir.display()
                );
                return Err(error::about(Kind::Usage, Setting::Out, msg));
            }
        }
    }
    if let Some(oc) = out_c.as_ref() {
        for i in inputs {
            if let Ok(ic) = i.canonicalize() {
                if ic.starts_with(oc) {
                    fail!(
                        Usage,
                        "output directory {} holds the input {}; replacing it would delete the input",
                        out.display(),
                        i.display()
                    );
                }
            }
        }
    }
    if out.exists() {
        if !force {
            let msg = format!("{} already exists", out.display());
            return Err(error::with_remedy(Kind::Output, msg, Remedy::Replace));
        }
        if !out.is_dir() {
            fail!(Output, "{} exists and is not a directory", out.display());
        }
    }
    let parent = parent(out);
    if !parent.is_dir() {
        fail!(Output, "directory {} does not exist", parent.display());
    }
    crate::util::fs::probe_writable(&parent)
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn tensor_bytes(t: &Tensor, dtype: DType) -> Result<(safetensors::Dtype, Vec<u8>)> {
    let flat = t.flatten_all()?;
    Ok(match dtype {
        DType::F32 => (
            safetensors::Dtype::F32,
            flat.to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        DType::F16 => (
            safetensors::Dtype::F16,
            flat.to_dtype(DType::F16)?
                .to_vec1::<half::f16>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        DType::BF16 => (
            safetensors::Dtype::BF16,
            flat.to_dtype(DType::BF16)?
                .to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        DType::I64 => (
            safetensors::Dtype::I64,
            flat.to_vec1::<i64>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        other => anyhow::bail!("cannot write dtype {other:?}"),
    })
}

use crate::util::fs::write_in as write_file;

/// What a model directory is written from.
pub struct Contents<'a> {
    /// The HF config (`torch_dtype` is set to the written dtype, `architectures` added when
    /// missing).
    pub config: &'a serde_json::Value,
    /// Every checkpoint tensor in checkpoint order, with its on-disk dtype and shard file.
    pub store: &'a WeightStore,
    /// The model whose linear weights replace the store's (the pruned model).
    pub model: &'a DecoderModel,
    /// Shard the output like the input (when the store knows the input's shards).
    pub sharded: bool,
    pub tokenizer: TokenizerFiles<'a>,
}

/// Where the tokenizer files (and other files that make the directory loadable) come from.
pub enum TokenizerFiles<'a> {
    /// Written as given (the built-in model's files).
    Embedded(Vec<(&'a str, &'a [u8])>),
    /// The files among [`EXTRA`] present in the model's directory `dir`, then `tokenizer` (the
    /// tokenizer.json that was loaded) as tokenizer.json when the directory had none.
    Copied {
        dir: Option<&'a Path>,
        tokenizer: Option<&'a Path>,
    },
}

/// Write a model directory `out` atomically (replacing an existing one only with `force`):
/// the weights in `dtype` (default: each tensor's on-disk dtype), the config, the tokenizer
/// files and `files` (report, mask).
pub fn write(
    c: &Contents,
    out: &Path,
    force: bool,
    dtype: Option<DType>,
    files: &[(String, Vec<u8>)],
) -> Result<()> {
    crate::util::fs::atomic_dir(out, force, |tmp| write_into(c, tmp, dtype, files))
}

/// Write a model's files into an existing directory (inside an atomic output directory).
pub fn write_into(
    c: &Contents,
    dir: &Path,
    dtype: Option<DType>,
    files: &[(String, Vec<u8>)],
) -> Result<()> {
    let (tensors, out_dtype) = plan_tensors(c, dtype)?;
    let mut by_file: BTreeMap<String, Vec<&Planned>> = BTreeMap::new();
    let sharded = c.sharded && !c.store.shard_of.is_empty();
    for t in &tensors {
        let f = match c.store.shard_of.get(&t.name) {
            _ if !sharded => "model.safetensors".to_string(),
            Some(f) => f.clone(),
            None => "model-extra.safetensors".into(),
        };
        by_file.entry(f).or_default().push(t);
    }
    for (f, list) in &by_file {
        write_safetensors(&dir.join(f), list)?;
    }
    if sharded {
        write_index(dir, &by_file)?;
    }
    write_config(dir, c, out_dtype)?;
    write_tokenizer(dir, &c.tokenizer)?;
    for (n, b) in files {
        write_file(dir, n, b)?;
    }
    Ok(())
}

/// One tensor to write: its name, the tensor and the dtype it is written in.
struct Planned<'a> {
    name: String,
    tensor: &'a Tensor,
    dtype: DType,
}

impl Planned<'_> {
    fn st_dtype(&self) -> safetensors::Dtype {
        match self.dtype {
            DType::F32 => safetensors::Dtype::F32,
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
            _ => safetensors::Dtype::I64,
        }
    }

    fn bytes(&self) -> usize {
        self.tensor.elem_count() * self.dtype.size_in_bytes()
    }
}

/// Every tensor of the store (the model's linear weights in place of the store's) in
/// checkpoint order, in `dtype` (default: its on-disk dtype; i64 stays i64), and the dtype
/// the written floats ended in.
fn plan_tensors<'a>(
    c: &'a Contents<'a>,
    dtype: Option<DType>,
) -> Result<(Vec<Planned<'a>>, DType)> {
    let replaced: HashMap<String, &Tensor> = c
        .model
        .linears()
        .into_iter()
        .map(|l| (format!("{}.weight", l.name), &l.weight))
        .collect();
    let store = c.store;
    let mut out_dtype = DType::F32;
    let mut tensors = Vec::new();
    for n in store.names() {
        let s = store.peek(n).expect("listed");
        let t = match replaced.get(n) {
            Some(t) => t,
            None if store.is_released(n) => {
                anyhow::bail!("tensor '{n}' is held by neither the store nor the model")
            }
            None => &s.tensor,
        };
        let dt = match s.disk_dtype {
            DType::I64 => DType::I64,
            disk => dtype.unwrap_or(disk),
        };
        if dt != DType::I64 {
            out_dtype = dt;
        }
        tensors.push(Planned {
            name: n.clone(),
            tensor: t,
            dtype: dt,
        });
    }
    Ok((tensors, out_dtype))
}

/// One safetensors file holding `list`, written tensor by tensor (one tensor's bytes in memory
/// at a time), with the layout `safetensors::serialize` gives.
fn write_safetensors(path: &Path, list: &[&Planned]) -> Result<()> {
    use crate::util::stfile::{Spec, Writer};
    let specs: Vec<Spec> = list
        .iter()
        .map(|t| Spec::new(t.name.clone(), t.st_dtype(), t.tensor.dims().to_vec()))
        .collect();
    let mut md = HashMap::new();
    md.insert("format".to_string(), "pt".to_string());
    let mut w = Writer::create(path, &specs, Some(md), true)?;
    for t in list {
        let (_, bytes) = tensor_bytes(t.tensor, t.dtype)?;
        w.write(&t.name, &bytes)?;
    }
    w.finish()
}

/// `model.safetensors.index.json` for the shards written.
fn write_index(dir: &Path, by_file: &BTreeMap<String, Vec<&Planned>>) -> Result<()> {
    let total: usize = by_file.values().flatten().map(|t| t.bytes()).sum();
    let mut weight_map = serde_json::Map::new();
    for (f, list) in by_file {
        for t in list {
            weight_map.insert(t.name.clone(), serde_json::Value::String(f.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_file(
        dir,
        "model.safetensors.index.json",
        serde_json::to_string_pretty(&index)?.as_bytes(),
    )
}

/// `config.json`: the input's config with the written dtype (and the architecture when the
/// config did not name it).
fn write_config(dir: &Path, c: &Contents, out_dtype: DType) -> Result<()> {
    let mut cfg = c.config.clone();
    if let Some(o) = cfg.as_object_mut() {
        let name = match out_dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        };
        o.insert("torch_dtype".into(), serde_json::Value::String(name.into()));
        if !o.contains_key("architectures") {
            let arch = match c.model.dims.arch.as_str() {
                "opt" => "OPTForCausalLM",
                _ => "LlamaForCausalLM",
            };
            o.insert("architectures".into(), serde_json::json!([arch]));
        }
    }
    write_file(
        dir,
        "config.json",
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )
}

fn write_tokenizer(dir: &Path, files: &TokenizerFiles) -> Result<()> {
    match files {
        TokenizerFiles::Embedded(list) => {
            for (n, b) in list {
                write_file(dir, n, b)?;
            }
        }
        TokenizerFiles::Copied {
            dir: src,
            tokenizer,
        } => {
            if let Some(src) = src {
                for f in EXTRA {
                    let p = src.join(f);
                    if p.is_file() {
                        let b = std::fs::read(&p)
                            .with_context(|| format!("reading {}", p.display()))?;
                        write_file(dir, f, &b)?;
                    }
                }
            }
            if let Some(t) = tokenizer {
                if !dir.join("tokenizer.json").exists() {
                    let b = std::fs::read(t).with_context(|| format!("reading {}", t.display()))?;
                    write_file(dir, "tokenizer.json", &b)?;
                }
            }
        }
    }
    Ok(())
}
