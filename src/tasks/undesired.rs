//! Sets of undesired behaviour for correction: JSONL records with `prompt` and an optional
//! `continuation` (each a string, or an object with `text` as in RealToxicityPrompts), or
//! plain text with one prompt per line. A seeded split holds part of the set out of the
//! attribution for evaluation.

use crate::data;
use crate::util::Rng;
use crate::{fail, invalid};
use anyhow::Result;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct Record {
    pub prompt: String,
    pub continuation: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SetInfo {
    pub file: String,
    pub sha256: String,
    pub format: String,
    pub records: usize,
    pub with_continuation: usize,
    pub holdout: f64,
    pub seed: u64,
    pub attribution: usize,
    pub evaluation: usize,
}

pub struct UndesiredSet {
    pub attribution: Vec<Record>,
    pub evaluation: Vec<Record>,
    pub info: SetInfo,
}

fn text_field(v: &serde_json::Value, key: &str) -> Option<String> {
    match v.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("text")?.as_str().map(str::to_string),
        _ => None,
    }
}

pub fn read(path: &Path, holdout: f64, seed: u64) -> Result<UndesiredSet> {
    if !(holdout > 0.0 && holdout < 1.0) {
        invalid!(Holdout, "must be in (0, 1), got {holdout}");
    }
    let (text, sha256) = data::read_utf8(path, "undesired set")?;
    let label = path.display().to_string();
    let jsonl = data::looks_like_jsonl(path, &text);
    let mut recs = Vec::new();
    if jsonl {
        for (line, v) in data::parse_jsonl(&label, &text)? {
            let Some(prompt) = text_field(&v, "prompt").filter(|p| !p.trim().is_empty()) else {
                fail!(
                    Input,
                    "{label}: line {line} has no prompt text (a string \"prompt\" or {{\"prompt\": {{\"text\": ...}}}})"
                );
            };
            let continuation = text_field(&v, "continuation").filter(|c| !c.trim().is_empty());
            recs.push(Record {
                prompt,
                continuation,
            });
        }
    } else {
        recs.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| Record {
                    prompt: l.to_string(),
                    continuation: None,
                }),
        );
    }
    if recs.is_empty() {
        fail!(Input, "undesired set {label} holds no prompts");
    }
    let n = recs.len();
    let n_eval = (n as f64 * holdout).round() as usize;
    if n_eval == 0 || n_eval == n {
        invalid!(
            Holdout,
            "{holdout} of {n} prompts leaves an empty side ({n_eval} held out, {} attributed)",
            n - n_eval
        );
    }
    let mut rng = Rng::new(seed ^ 0xC0_22EC7);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        recs.swap(i, j);
    }
    let with_continuation = recs.iter().filter(|r| r.continuation.is_some()).count();
    let evaluation = recs.split_off(n - n_eval);
    Ok(UndesiredSet {
        info: SetInfo {
            file: label,
            sha256,
            format: if jsonl { "jsonl" } else { "text" }.into(),
            records: n,
            with_continuation,
            holdout,
            seed,
            attribution: recs.len(),
            evaluation: evaluation.len(),
        },
        attribution: recs,
        evaluation,
    })
}

/// A record as token ids: the prompt (with the tokenizer's special tokens) and its given
/// continuation, if any (truncated to `max_continuation` tokens).
pub struct Encoded {
    pub prompt: Vec<u32>,
    pub continuation: Option<Vec<u32>>,
}

pub fn encode(
    tok: &tokenizers::Tokenizer,
    recs: &[Record],
    max_continuation: usize,
    label: &str,
) -> Result<Vec<Encoded>> {
    recs.iter()
        .map(|r| {
            let prompt = super::task::encode_prompt(tok, &r.prompt)?;
            if prompt.is_empty() {
                fail!(
                    Input,
                    "{label}: a prompt encodes to no tokens: {:?}",
                    r.prompt
                );
            }
            let continuation = match &r.continuation {
                Some(t) => {
                    let mut ids = data::encode_plain(tok, t)?;
                    ids.truncate(max_continuation);
                    (!ids.is_empty()).then_some(ids)
                }
                None => None,
            };
            Ok(Encoded {
                prompt,
                continuation,
            })
        })
        .collect()
}
