//! Model sources: resolve `--model` (built-in demo, HF directory, sharded index, hub id, GGUF file)
//! into a config, a tensor store and a tokenizer, then build the architecture.

pub mod builtin;
pub mod gguf;
pub mod hub;
pub mod weights;

use crate::error::{Kind, Tag};
use crate::fail;
use crate::model::weights::WeightStore;
use crate::model::{self, DecoderModel};
use crate::util::sha256_hex;
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// What the user asked for on the command line.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    /// `None` selects the built-in demo model.
    pub model: Option<String>,
    pub tokenizer: Option<PathBuf>,
    pub offline: bool,
    pub device: Device,
    /// Storage dtype of the weights in memory (None: each tensor's on-disk dtype; compute is
    /// f32 on CPU).
    pub dtype: Option<DType>,
}

impl ModelRequest {
    pub fn cpu(model: impl Into<String>) -> Self {
        Self {
            model: Some(model.into()),
            tokenizer: None,
            offline: true,
            device: Device::Cpu,
            dtype: None,
        }
    }
}

/// Where a model came from, for reports and for writing derived models.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    Builtin {
        name: String,
    },
    Dir {
        path: PathBuf,
        sharded: bool,
    },
    Hub {
        id: String,
        commit: String,
        path: PathBuf,
        sharded: bool,
    },
    Gguf {
        path: PathBuf,
    },
}

impl Origin {
    /// Local directory holding the model's files (for tokenizer extras and for `--out` checks).
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Origin::Builtin { .. } => None,
            Origin::Dir { path, .. } | Origin::Hub { path, .. } => Some(path),
            Origin::Gguf { path } => path.parent(),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Origin::Builtin { name } => format!("builtin:{name}"),
            Origin::Dir { path, .. } => path.display().to_string(),
            Origin::Hub { id, commit, .. } => format!("{id} ({commit})"),
            Origin::Gguf { path } => path.display().to_string(),
        }
    }

    pub fn sharded(&self) -> bool {
        matches!(
            self,
            Origin::Dir { sharded: true, .. } | Origin::Hub { sharded: true, .. }
        )
    }
}

/// A loaded model with everything needed to run, report and write it back.
pub struct Loaded {
    pub model: DecoderModel,
    pub tokenizer: tokenizers::Tokenizer,
    pub origin: Origin,
    /// The HF config (as read, or derived from GGUF metadata).
    pub config: serde_json::Value,
    /// sha256 of the canonical config JSON: identifies the architecture and sizes.
    pub config_sha256: String,
    /// All checkpoint tensors by HF name (shared with the model; Tensor clones are cheap).
    pub store: WeightStore,
    /// The tokenizer.json that was loaded (None for the built-in model).
    pub tokenizer_path: Option<PathBuf>,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .tag(Kind::Input)?;
    if meta.is_dir() {
        fail!(
            Input,
            "{} is a directory, expected a JSON file",
            path.display()
        );
    }
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .tag(Kind::Input)?;
    let text = match String::from_utf8(text) {
        Ok(t) => t,
        Err(_) => fail!(Input, "{}: not UTF-8 text", path.display()),
    };
    match serde_json::from_str(&text) {
        Ok(v) => Ok(v),
        Err(e) => fail!(Input, "{}: invalid JSON: {e}", path.display()),
    }
}

fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    match std::fs::metadata(path) {
        Err(e) => fail!(Input, "cannot read tokenizer {}: {e}", path.display()),
        Ok(m) if m.is_dir() => fail!(
            Input,
            "tokenizer {} is a directory, expected tokenizer.json",
            path.display()
        ),
        Ok(_) => {}
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read tokenizer {}", path.display()))
        .tag(Kind::Input)?;
    tokenizer_from_bytes(&bytes, path)
}

pub fn tokenizer_from_bytes(bytes: &[u8], label: &Path) -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| {
        crate::error::err(
            Kind::Input,
            format!("{}: not a usable tokenizer.json: {e}", label.display()),
        )
    })
}

/// Resolve and load a model.
pub fn load(req: &ModelRequest) -> Result<Loaded> {
    let mut store = WeightStore::new(req.device.clone(), req.dtype);
    if let Some(m) = req.model.as_deref().filter(|m| m.starts_with("builtin:")) {
        if m != format!("builtin:{}", builtin::DEMO_NAME) {
            fail!(
                Usage,
                "unknown built-in model {m}: the only built-in model is builtin:{}",
                builtin::DEMO_NAME
            );
        }
    }
    let Some(m) = req.model.as_deref().filter(|m| !m.starts_with("builtin:")) else {
        let (cfg, tok) = builtin::load_demo(&mut store)?;
        let model = build(&cfg, &store, Path::new(builtin::DEMO_LABEL))?;
        let origin = Origin::Builtin {
            name: builtin::DEMO_NAME.into(),
        };
        return finish(origin, cfg, model, tok, store, None);
    };
    let (origin, config, tok_path) = resolve(m, req, &mut store)?;
    let label = origin
        .dir()
        .map(|d| d.join("config.json"))
        .unwrap_or_default();
    let model = build(&config, &store, &label)?;
    let tok = match &tok_path {
        Some(t) => {
            if !t.exists() {
                fail!(
                    Input,
                    "tokenizer {} not found (put a tokenizer.json beside the model or name a tokenizer file)",
                    t.display()
                );
            }
            load_tokenizer(t)?
        }
        None => fail!(Input, "no tokenizer: name a tokenizer file"),
    };
    finish(origin, config, model, tok, store, tok_path)
}

/// A model's origin, its config and the tokenizer.json to load.
type Resolved = (Origin, serde_json::Value, Option<PathBuf>);

/// Resolve `m` (a model directory, a GGUF file or a hub id) and fill `store` with its
/// tensors.
fn resolve(m: &str, req: &ModelRequest, store: &mut WeightStore) -> Result<Resolved> {
    let p = Path::new(m);
    if p.exists() || p.symlink_metadata().is_ok() {
        let meta = std::fs::metadata(p)
            .with_context(|| format!("cannot access model {m}"))
            .tag(Kind::Input)?;
        if meta.is_dir() {
            from_dir(p, req, store)
        } else if is_gguf(p)? {
            from_gguf(p, req, store)
        } else {
            fail!(
                Input,
                "model {m} is a file that is not GGUF; give a model directory (config.json + safetensors), a .gguf file or a hub id"
            );
        }
    } else if let Some(id) = hub::HubId::parse(m) {
        from_hub(&id, req, store)
    } else {
        fail!(
            Input,
            "model {m}: no such file or directory, and not a hub id (org/name[@revision])"
        );
    }
}

/// A model directory: config.json and safetensors (single or sharded).
fn from_dir(p: &Path, req: &ModelRequest, store: &mut WeightStore) -> Result<Resolved> {
    let cfg = read_json(&p.join("config.json"))?;
    let (files, shard_of) = weights::safetensors_files(p)?;
    weights::load_safetensors(store, &files, &shard_of)?;
    let tok = req
        .tokenizer
        .clone()
        .unwrap_or_else(|| p.join("tokenizer.json"));
    let origin = Origin::Dir {
        path: p.to_path_buf(),
        sharded: !shard_of.is_empty(),
    };
    Ok((origin, cfg, Some(tok)))
}

/// A GGUF file, with the config.json beside it or one derived from its metadata.
fn from_gguf(p: &Path, req: &ModelRequest, store: &mut WeightStore) -> Result<Resolved> {
    let (content, mut file) = gguf::read_content(p)?;
    let beside = p.parent().map(|d| d.join("config.json"));
    let cfg = match beside.filter(|b| b.is_file()) {
        Some(b) => read_json(&b)?,
        None => gguf::config_from_metadata(p, &content)?,
    };
    gguf::load_gguf(store, p, &content, &mut file, &cfg)?;
    let tok = req
        .tokenizer
        .clone()
        .or_else(|| p.parent().map(|d| d.join("tokenizer.json")));
    let origin = Origin::Gguf {
        path: p.to_path_buf(),
    };
    Ok((origin, cfg, tok))
}

/// A hub id, resolved through the Hugging Face cache (downloading unless offline).
fn from_hub(id: &hub::HubId, req: &ModelRequest, store: &mut WeightStore) -> Result<Resolved> {
    let offline = req.offline || hub::offline_from_env();
    let files = hub::resolve(id, offline)?;
    let cfg = read_json(&files.dir.join("config.json"))?;
    let (wfiles, shard_of) = weights::safetensors_files(&files.dir)?;
    weights::load_safetensors(store, &wfiles, &shard_of)?;
    let tok = req
        .tokenizer
        .clone()
        .unwrap_or_else(|| files.dir.join("tokenizer.json"));
    let origin = Origin::Hub {
        id: id.to_string(),
        commit: files.commit,
        path: files.dir.clone(),
        sharded: !shard_of.is_empty(),
    };
    Ok((origin, cfg, Some(tok)))
}

fn finish(
    origin: Origin,
    config: serde_json::Value,
    model: DecoderModel,
    tokenizer: tokenizers::Tokenizer,
    store: WeightStore,
    tokenizer_path: Option<PathBuf>,
) -> Result<Loaded> {
    let vocab = tokenizer.get_vocab_size(true);
    if vocab > model.dims.vocab {
        fail!(
            Input,
            "tokenizer has {vocab} tokens but the model's vocabulary is {} (mismatched tokenizer?)",
            model.dims.vocab
        );
    }
    let config_sha256 = sha256_hex(serde_json::to_string(&canonical(&config))?.as_bytes());
    Ok(Loaded {
        model,
        tokenizer,
        origin,
        config,
        config_sha256,
        store,
        tokenizer_path,
    })
}

/// Config keys that matter for the architecture (drops bookkeeping such as versions).
fn canonical(cfg: &serde_json::Value) -> serde_json::Value {
    let mut c = cfg.clone();
    if let Some(o) = c.as_object_mut() {
        for k in [
            "transformers_version",
            "_name_or_path",
            "torch_dtype",
            "use_cache",
            "architectures",
        ] {
            o.remove(k);
        }
        o.sort_keys();
    }
    c
}

fn is_gguf(p: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)
        .with_context(|| format!("cannot open {}", p.display()))
        .tag(Kind::Input)?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"GGUF"),
        Err(_) => Ok(false),
    }
}

fn build(cfg: &serde_json::Value, store: &WeightStore, label: &Path) -> Result<DecoderModel> {
    model::build(cfg, store)
        .with_context(|| format!("building the model from {}", label.display()))
        .tag(Kind::Input)
}
