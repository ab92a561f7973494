//! Writing a (pruned) model back in Hugging Face layout: `config.json`, tokenizer files,
//! safetensors weights in the input's dtype (or an override), sharded like the input, plus a
//! report. The directory is built under a temporary name beside `--out`, every file fsynced,
//! then renamed into place; an existing `--out` is only replaced with `force`.

use crate::fail;
use crate::model::DecoderModel;
use crate::source::{Loaded, Origin};
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One tensor ready to serialise: name, dtype, shape, little-endian bytes.
type Raw = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

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

/// Refuse an output directory that exists (without force), is the model's own directory, sits
/// inside it, or would (when replaced) delete one of the inputs.
pub fn check_out_dir(out: &Path, force: bool, loaded: &Loaded, inputs: &[PathBuf]) -> Result<()> {
    let out_c = canonical(out);
    if let (Some(dir), Some(oc)) = (loaded.origin.dir(), out_c.as_ref()) {
        if let Ok(d) = dir.canonicalize() {
            if &d == oc {
                fail!(
                    Usage,
                    "--out {} is the model's own directory; refusing to overwrite the input",
                    out.display()
                );
            }
            if oc.starts_with(&d) {
                fail!(
                    Usage,
                    "--out {} is inside the model's directory {}; write it elsewhere",
                    out.display(),
                    dir.display()
                );
            }
            if d.starts_with(oc) {
                fail!(
                    Usage,
                    "--out {} holds the model's directory {}; replacing it would delete the input",
                    out.display(),
                    dir.display()
                );
            }
        }
    }
    if let Some(oc) = out_c.as_ref() {
        for i in inputs {
            if let Ok(ic) = i.canonicalize() {
                if ic.starts_with(oc) {
                    fail!(
                        Usage,
                        "--out {} holds the input {}; replacing it would delete the input",
                        out.display(),
                        i.display()
                    );
                }
            }
        }
    }
    if out.exists() {
        if !force {
            fail!(
                Output,
                "{} already exists (use --force to replace it)",
                out.display()
            );
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

/// Write `model` (the loaded model after pruning) to `out`. `files` are extra outputs
/// (report, mask) written into the same directory.
pub fn write_model(
    loaded: &Loaded,
    model: &DecoderModel,
    out: &Path,
    force: bool,
    dtype: Option<DType>,
    files: &[(String, Vec<u8>)],
) -> Result<()> {
    crate::util::fs::atomic_dir(out, force, |tmp| {
        write_contents(loaded, model, tmp, dtype, files)
    })
}

/// Write the model's files into an existing directory (inside an atomic output directory).
pub fn write_contents(
    loaded: &Loaded,
    model: &DecoderModel,
    dir: &Path,
    dtype: Option<DType>,
    files: &[(String, Vec<u8>)],
) -> Result<()> {
    let replaced: HashMap<String, &Tensor> = model
        .linears()
        .into_iter()
        .map(|l| (format!("{}.weight", l.name), &l.weight))
        .collect();
    let store = &loaded.store;
    // name → (dtype, shape, bytes), in checkpoint order.
    let mut tensors: Vec<Raw> = Vec::new();
    let mut out_dtype = DType::F32;
    for n in store.names() {
        let s = store.peek(n).expect("listed");
        let t = replaced.get(n).copied().unwrap_or(&s.tensor);
        let dt = if s.disk_dtype == DType::I64 {
            DType::I64
        } else {
            dtype.unwrap_or(s.disk_dtype)
        };
        if dt != DType::I64 {
            out_dtype = dt;
        }
        let (sd, bytes) = tensor_bytes(t, dt)?;
        tensors.push((n.clone(), sd, t.dims().to_vec(), bytes));
    }
    let serialize = |subset: &[&Raw]| -> Result<Vec<u8>> {
        let views = subset
            .iter()
            .map(|(n, d, s, b)| {
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut md = HashMap::new();
        md.insert("format".to_string(), "pt".to_string());
        Ok(safetensors::serialize(views, Some(md))?)
    };
    if loaded.origin.sharded() && !store.shard_of.is_empty() {
        let mut by_file: BTreeMap<String, Vec<&Raw>> = BTreeMap::new();
        for t in &tensors {
            let f = store
                .shard_of
                .get(&t.0)
                .cloned()
                .unwrap_or_else(|| "model-extra.safetensors".into());
            by_file.entry(f).or_default().push(t);
        }
        let total: usize = tensors.iter().map(|t| t.3.len()).sum();
        let mut weight_map = serde_json::Map::new();
        for (f, list) in &by_file {
            write_file(dir, f, &serialize(list)?)?;
            for t in list {
                weight_map.insert(t.0.clone(), serde_json::Value::String(f.clone()));
            }
        }
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_file(
            dir,
            "model.safetensors.index.json",
            serde_json::to_string_pretty(&index)?.as_bytes(),
        )?;
    } else {
        let all: Vec<_> = tensors.iter().collect();
        write_file(dir, "model.safetensors", &serialize(&all)?)?;
    }
    let mut cfg = loaded.config.clone();
    if let Some(o) = cfg.as_object_mut() {
        let name = match out_dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        };
        o.insert("torch_dtype".into(), serde_json::Value::String(name.into()));
        if !o.contains_key("architectures") {
            let arch = match model.dims.arch.as_str() {
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
    )?;
    match &loaded.origin {
        Origin::Builtin { .. } => {
            write_file(
                dir,
                "tokenizer.json",
                crate::source::builtin::tokenizer_json(),
            )?;
            for (n, b) in crate::source::builtin::EXTRA_FILES {
                write_file(dir, n, b)?;
            }
        }
        o => {
            if let Some(src) = o.dir() {
                for f in EXTRA {
                    let p = src.join(f);
                    if p.is_file() {
                        let b = std::fs::read(&p)
                            .with_context(|| format!("reading {}", p.display()))?;
                        write_file(dir, f, &b)?;
                    }
                }
            }
            if let Some(t) = &loaded.tokenizer_path {
                if !dir.join("tokenizer.json").exists() {
                    let b = std::fs::read(t).with_context(|| format!("reading {}", t.display()))?;
                    write_file(dir, "tokenizer.json", &b)?;
                }
            }
        }
    }
    for (n, b) in files {
        write_file(dir, n, b)?;
    }
    Ok(())
}
