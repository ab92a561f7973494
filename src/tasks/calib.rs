//! Calibration samples for attribution and pruning.
//!
//! Recipe (documented, seeded, deterministic):
//! - JSONL whose records hold `ids`: one sample per record, truncated to `seq_len`, used as is.
//! - JSONL with `text` records (documents, e.g. C4): Wanda's C4 recipe — draw a document index
//!   uniformly until one has more than `seq_len` tokens, then a window start uniformly in
//!   `[0, len − seq_len − 1]`.
//! - Plain text: tokenized once as a whole; window starts drawn uniformly in `[0, len − seq_len]`.
//!
//! Randomness is SplitMix64 seeded with `--seed`, so every shard of a sharded run draws the
//! same sample list and takes its own slice of it.

use crate::data::{self, TextSource};
use crate::error::{about, Kind, Setting};
use crate::util::Rng;
use crate::{fail, invalid};
use anyhow::Result;
use std::path::Path;

/// How the samples were made (recorded in outputs).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CalibInfo {
    pub file: String,
    pub sha256: String,
    pub recipe: String,
    pub samples: usize,
    pub seq_len: usize,
    pub seed: u64,
}

pub struct Calib {
    pub samples: Vec<Vec<u32>>,
    pub info: CalibInfo,
    /// For `ids` records: the file line of each sample (for error messages).
    pub lines: Vec<usize>,
}

/// Prompt + continuation samples for span targets: JSONL records with `prompt` and
/// `continuation` strings (or RealToxicityPrompts' `{"prompt": {"text"}, "continuation": {"text"}}`).
/// The prompt is encoded with the tokenizer's special tokens (e.g. BOS), the continuation
/// without. Returns the samples and each sample's prompt length; the first `n` usable records.
pub fn spans(
    path: &Path,
    tok: &tokenizers::Tokenizer,
    n: usize,
    seq_len: usize,
) -> Result<(Vec<Vec<u32>>, Vec<usize>, CalibInfo)> {
    let (text, sha) = data::read_utf8(path, "data file")?;
    let label = path.display().to_string();
    let recs = data::parse_jsonl(&label, &text)?;
    if recs.is_empty() {
        fail!(Input, "data file {label} has no records");
    }
    let field = |r: &serde_json::Value, k: &str| -> Option<String> {
        let v = r.get(k)?;
        v.as_str()
            .map(String::from)
            .or_else(|| v.get("text")?.as_str().map(String::from))
    };
    let mut samples = Vec::new();
    let mut prompt_lens = Vec::new();
    for (line, r) in &recs {
        let (Some(p), Some(c)) = (field(r, "prompt"), field(r, "continuation")) else {
            fail!(
                Input,
                "{label}: line {line} needs \"prompt\" and \"continuation\" text for the continuation-span target"
            );
        };
        let pe = tok.encode_fast(p.as_str(), true).map_err(|e| {
            crate::error::err(crate::error::Kind::Input, format!("tokenizing: {e}"))
        })?;
        let mut ids = pe.get_ids().to_vec();
        let plen = ids.len();
        ids.extend(data::encode_plain(tok, &c)?);
        ids.truncate(seq_len);
        if plen == 0 || ids.len() <= plen {
            fail!(
                Input,
                "{label}: line {line}: empty prompt or continuation (within the sequence length {seq_len})"
            );
        }
        samples.push(ids);
        prompt_lens.push(plen);
        if samples.len() == n {
            break;
        }
    }
    if samples.len() < n {
        fail!(
            Input,
            "{label} holds {} records, fewer than the {n} samples asked for",
            samples.len()
        );
    }
    let info = CalibInfo {
        file: label,
        sha256: sha,
        recipe: "prompt+continuation records (span target)".into(),
        samples: n,
        seq_len,
        seed: 0,
    };
    Ok((samples, prompt_lens, info))
}

/// Build `n` samples of `seq_len` tokens from a data file (or the given built-in text).
pub fn sample(
    path: Option<&Path>,
    builtin: impl FnOnce() -> TextSource,
    tok: &tokenizers::Tokenizer,
    n: usize,
    seq_len: usize,
    seed: u64,
) -> Result<Calib> {
    if n == 0 {
        invalid!(Samples, "must be at least 1");
    }
    if seq_len < 2 {
        invalid!(SeqLen, "must be at least 2, got {seq_len}");
    }
    let mut rng = Rng::new(seed);
    let (label, sha, text, jsonl) = match path {
        Some(p) => {
            let (text, sha) = data::read_utf8(p, "data file")?;
            let jsonl = data::looks_like_jsonl(p, &text);
            (p.display().to_string(), sha, text, jsonl)
        }
        None => {
            let s = builtin();
            (s.label, s.sha256, s.text, false)
        }
    };
    if text.trim().is_empty() {
        fail!(Input, "data file {label} is empty");
    }
    let (samples, recipe, lines) = if jsonl {
        let recs = data::parse_jsonl(&label, &text)?;
        if recs.is_empty() {
            fail!(Input, "data file {label} has no records");
        }
        if recs[0].1.get("ids").is_some() {
            let (samples, lines) = id_records(&label, &recs, n, seq_len)?;
            (samples, "ids-records", lines)
        } else {
            let samples = document_windows(&label, &recs, tok, n, seq_len, &mut rng)?;
            let recipe = "wanda-c4: random document with > seq_len tokens, random window";
            (samples, recipe, Vec::new())
        }
    } else {
        let samples = text_windows(&label, &text, tok, n, seq_len, &mut rng)?;
        let recipe = "text: random windows of the tokenized file";
        (samples, recipe, Vec::new())
    };
    Ok(Calib {
        samples,
        info: CalibInfo {
            file: label,
            sha256: sha,
            recipe: recipe.into(),
            samples: n,
            seq_len,
            seed,
        },
        lines,
    })
}

/// JSONL records holding `ids`: the first `n`, each truncated to `seq_len`, with their line
/// numbers.
fn id_records(
    label: &str,
    recs: &[(usize, serde_json::Value)],
    n: usize,
    seq_len: usize,
) -> Result<(Vec<Vec<u32>>, Vec<usize>)> {
    let mut samples = Vec::new();
    let mut lines = Vec::new();
    for (line, r) in recs {
        let Some(arr) = r.get("ids").and_then(|v| v.as_array()) else {
            fail!(Input, "{label}: line {line} has no \"ids\" list");
        };
        let mut ids = Vec::with_capacity(arr.len().min(seq_len));
        for v in arr.iter().take(seq_len) {
            match v.as_u64() {
                Some(x) if x <= u32::MAX as u64 => ids.push(x as u32),
                _ => fail!(
                    Input,
                    "{label}: line {line}: \"ids\" must hold non-negative integers"
                ),
            }
        }
        if ids.len() < 2 {
            fail!(
                Input,
                "{label}: line {line} has {} token(s); samples need at least 2",
                ids.len()
            );
        }
        samples.push(ids);
        lines.push(*line);
        if samples.len() == n {
            break;
        }
    }
    if samples.len() < n {
        return Err(about(
            Kind::Input,
            Setting::Samples,
            format!("{n}: {label} holds {} id records, fewer", samples.len()),
        ));
    }
    Ok((samples, lines))
}

/// JSONL `text` documents (Wanda's C4 recipe): draw a document until one has more than
/// `seq_len` tokens, then a window in it.
fn document_windows(
    label: &str,
    recs: &[(usize, serde_json::Value)],
    tok: &tokenizers::Tokenizer,
    n: usize,
    seq_len: usize,
    rng: &mut Rng,
) -> Result<Vec<Vec<u32>>> {
    let mut docs = Vec::with_capacity(recs.len());
    for (line, r) in recs {
        match r.get("text").and_then(|t| t.as_str()) {
            Some(t) => docs.push(t),
            None => fail!(
                Input,
                "{label}: line {line} has neither \"ids\" nor a string \"text\""
            ),
        }
    }
    // Tokenize lazily; give up once every document is known to be too short.
    let mut cache: Vec<Option<Vec<u32>>> = vec![None; docs.len()];
    let mut short = vec![false; docs.len()];
    let mut n_short = 0;
    let mut samples = Vec::with_capacity(n);
    while samples.len() < n {
        let i = rng.below(docs.len() as u64) as usize;
        if short[i] {
            continue;
        }
        if cache[i].is_none() {
            cache[i] = Some(data::encode_plain(tok, docs[i])?);
        }
        let ids = cache[i].as_ref().expect("cached");
        if ids.len() <= seq_len {
            short[i] = true;
            n_short += 1;
            cache[i] = None;
            if n_short == docs.len() {
                return Err(about(
                    Kind::Input,
                    Setting::SeqLen,
                    format!("{seq_len}: no document of {label} has more tokens"),
                ));
            }
            continue;
        }
        let start = rng.below((ids.len() - seq_len) as u64) as usize;
        samples.push(ids[start..start + seq_len].to_vec());
    }
    Ok(samples)
}

/// Plain text, tokenized as a whole: `n` windows at uniform random starts.
fn text_windows(
    label: &str,
    text: &str,
    tok: &tokenizers::Tokenizer,
    n: usize,
    seq_len: usize,
    rng: &mut Rng,
) -> Result<Vec<Vec<u32>>> {
    let ids = data::encode_plain(tok, text)?;
    if ids.len() < seq_len {
        return Err(about(
            Kind::Input,
            Setting::SeqLen,
            format!(
                "{seq_len}: {label} has {} tokens, too little text for one window",
                ids.len()
            ),
        ));
    }
    let span = (ids.len() - seq_len + 1) as u64;
    Ok((0..n)
        .map(|_| {
            let s = rng.below(span) as usize;
            ids[s..s + seq_len].to_vec()
        })
        .collect())
}
