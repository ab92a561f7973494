//! `eval`: perplexity of a model on a text (non-overlapping windows from token 0).

use super::prepare::defaults;
use super::{DataRef, Progress, Provenance};
use crate::data;
use crate::eval::perplexity;
use crate::source::Loaded;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Plain text or JSONL `text` records (None: the built-in held-out text).
    pub text: Option<PathBuf>,
    /// Window length (None: the model's default, see [`defaults::seq_len`]).
    pub seq_len: Option<usize>,
    /// Evaluate only the first N windows.
    pub max_windows: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TextInfo {
    pub file: String,
    pub sha256: String,
    /// `text` or `jsonl`.
    pub format: String,
    pub records: usize,
}

/// `eval --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub text: TextInfo,
    pub compute_dtype: String,
    pub seq_len: usize,
    pub windows: usize,
    pub available_windows: usize,
    pub tokens: usize,
    pub predicted_tokens: usize,
    pub mean_nll: f64,
    pub ppl: f64,
    pub per_window_nll: Vec<f64>,
}

/// The text is read before the model is loaded (a missing file fails at once).
pub fn read_text(cfg: &Config) -> Result<data::TextSource> {
    match &cfg.text {
        Some(p) => data::read_text(p),
        None => Ok(data::builtin_eval_text()),
    }
}

pub fn run(
    loaded: &Loaded,
    cfg: &Config,
    src: &data::TextSource,
    progress: &dyn Progress,
) -> Result<Report> {
    let start = std::time::Instant::now();
    let ids = data::encode_plain(&loaded.tokenizer, &src.text)?;
    let seq_len = cfg.seq_len.unwrap_or_else(|| defaults::seq_len(loaded));
    progress.stage("windows", 0);
    let r = perplexity::perplexity(&loaded.model, &ids, seq_len, cfg.max_windows, |i, n| {
        progress.position(i as u64, Some(n as u64));
    })?;
    progress.done();
    let data = vec![DataRef::new("text", &src.label, &src.sha256)];
    Ok(Report {
        provenance: Provenance::of("eval", loaded, data, start),
        text: TextInfo {
            file: src.label.clone(),
            sha256: src.sha256.clone(),
            format: src.format.to_string(),
            records: src.records,
        },
        compute_dtype: "f32".into(),
        seq_len: r.seq_len,
        windows: r.windows,
        available_windows: r.available_windows,
        tokens: r.tokens,
        predicted_tokens: r.predicted,
        mean_nll: r.mean_nll,
        ppl: r.ppl,
        per_window_nll: r.per_window_nll,
    })
}
