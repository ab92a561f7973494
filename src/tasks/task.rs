//! Two-choice tasks for circuits: a prompt, a target continuation and a foil, each one token.
//! The metric explains and evaluates `logit(target) − logit(foil)` at the prompt's last position.

use crate::data;
use crate::error::Kind;
use crate::fail;
use crate::util::Rng;
use anyhow::Result;
use std::path::Path;
use tokenizers::Tokenizer;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TaskPrompt {
    pub prompt: String,
    #[serde(skip)]
    pub ids: Vec<u32>,
    pub target: String,
    pub foil: String,
    #[serde(skip)]
    pub target_id: u32,
    #[serde(skip)]
    pub foil_id: u32,
}

/// Where a task came from (recorded in reports).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TaskInfo {
    pub name: String,
    pub source: String,
    pub sha256: String,
    pub seed: u64,
    pub attribution_prompts: usize,
    pub evaluation_prompts: usize,
    /// Extra facts (IOI: the usable names/places/objects).
    pub details: serde_json::Value,
}

/// Attribution and held-out evaluation prompts: disjoint by prompt text.
pub struct TaskSet {
    pub attribution: Vec<TaskPrompt>,
    pub evaluation: Vec<TaskPrompt>,
    pub info: TaskInfo,
}

/// Encode a prompt as the model sees it (with the tokenizer's special tokens, as `transformers`
/// does by default).
pub fn encode_prompt(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok
        .encode_fast(text, true)
        .map_err(|e| crate::error::err(Kind::Input, format!("tokenizing a prompt: {e}")))?;
    Ok(enc.get_ids().to_vec())
}

/// The single token of a continuation, or `None` when it is not exactly one token.
pub fn single_token(tok: &Tokenizer, text: &str) -> Result<Option<u32>> {
    let ids = data::encode_plain(tok, text)?;
    Ok(if ids.len() == 1 { Some(ids[0]) } else { None })
}

fn token_count(tok: &Tokenizer, text: &str) -> usize {
    data::encode_plain(tok, text).map_or(0, |v| v.len())
}

/// Split shuffled prompts: the first `n_attr` attribute, up to `n_eval` of the rest evaluate.
pub fn split(
    mut all: Vec<TaskPrompt>,
    n_attr: usize,
    n_eval: usize,
    seed: u64,
    label: &str,
) -> Result<(Vec<TaskPrompt>, Vec<TaskPrompt>)> {
    let mut rng = Rng::new(seed ^ 0x7A5C);
    for i in (1..all.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        all.swap(i, j);
    }
    if all.len() < 2 {
        fail!(
            Input,
            "{label}: {} usable prompt(s); a task needs at least 2 (attribution and held-out)",
            all.len()
        );
    }
    // Keep at least a quarter of a small file for evaluation.
    let n_attr = n_attr.min(all.len() - all.len().div_ceil(4)).max(1);
    let mut rest = all.split_off(n_attr);
    rest.truncate(n_eval);
    Ok((all, rest))
}

/// Read a task file: JSONL records with `prompt`, `target` and `foil`.
pub fn from_file(
    path: &Path,
    tok: &Tokenizer,
    n_attr: usize,
    n_eval: usize,
    seed: u64,
) -> Result<TaskSet> {
    let (text, sha256) = data::read_utf8(path, "task file")?;
    let label = path.display().to_string();
    let recs = data::parse_jsonl(&label, &text)?;
    if recs.is_empty() {
        fail!(Input, "task file {label} holds no records");
    }
    let mut all = Vec::with_capacity(recs.len());
    for (line, r) in recs {
        let field = |k: &str| -> Result<String> {
            match r.get(k).and_then(|v| v.as_str()) {
                Some(s) if !s.is_empty() => Ok(s.to_string()),
                _ => fail!(
                    Input,
                    "{label}: line {line} has no non-empty string field \"{k}\""
                ),
            }
        };
        let (prompt, target, foil) = (field("prompt")?, field("target")?, field("foil")?);
        let one = |k: &str, s: &str| -> Result<u32> {
            match single_token(tok, s)? {
                Some(id) => Ok(id),
                None => fail!(
                    Input,
                    "{label}: line {line}: {k} {s:?} is {} tokens for this tokenizer; targets and foils must be one token (mind the leading space)",
                    token_count(tok, s)
                ),
            }
        };
        let (target_id, foil_id) = (one("target", &target)?, one("foil", &foil)?);
        if target_id == foil_id {
            fail!(
                Input,
                "{label}: line {line}: target and foil are the same token"
            );
        }
        let ids = encode_prompt(tok, &prompt)?;
        if ids.is_empty() {
            fail!(
                Input,
                "{label}: line {line}: the prompt encodes to no tokens"
            );
        }
        all.push(TaskPrompt {
            prompt,
            ids,
            target,
            foil,
            target_id,
            foil_id,
        });
    }
    let (attribution, evaluation) = split(all, n_attr, n_eval, seed, &label)?;
    Ok(TaskSet {
        info: TaskInfo {
            name: path
                .file_stem()
                .map_or("task".into(), |s| s.to_string_lossy().to_string()),
            source: label,
            sha256,
            seed,
            attribution_prompts: attribution.len(),
            evaluation_prompts: evaluation.len(),
            details: serde_json::Value::Null,
        },
        attribution,
        evaluation,
    })
}
