//! Text inputs: plain text files and JSONL records, with provenance (sha256).

use crate::error::{Kind, Tag};
use crate::fail;
use anyhow::{Context, Result};
use std::path::Path;

/// A text input with its provenance.
pub struct TextSource {
    pub text: String,
    /// File path or built-in label.
    pub label: String,
    /// sha256 of the file bytes.
    pub sha256: String,
    /// "text" or "jsonl".
    pub format: &'static str,
    pub records: usize,
}

/// Read a whole file as UTF-8, with clear errors for directories, permissions and encodings.
pub fn read_utf8(path: &Path, what: &str) -> Result<(String, String)> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{what} {}: cannot access", path.display()))
        .tag(Kind::Input)?;
    if meta.is_dir() {
        fail!(
            Input,
            "{what} {} is a directory, expected a file",
            path.display()
        );
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("{what} {}: cannot read", path.display()))
        .tag(Kind::Input)?;
    let sha = crate::util::sha256_hex(&bytes);
    match String::from_utf8(bytes) {
        Ok(s) => Ok((s, sha)),
        Err(e) => {
            let off = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..off].iter().filter(|&&b| b == b'\n').count() + 1;
            fail!(
                Input,
                "{what} {}: not valid UTF-8 (line {line}, byte {off})",
                path.display()
            )
        }
    }
}

/// Is this file JSONL? By extension, or by a first non-blank line that is a JSON object.
pub fn looks_like_jsonl(path: &Path, text: &str) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "jsonl" || ext == "ndjson" {
        return true;
    }
    if ext == "txt" || ext == "raw" {
        return false;
    }
    text.lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| {
            l.trim_start().starts_with('{') && serde_json::from_str::<serde_json::Value>(l).is_ok()
        })
}

/// Parse JSONL into objects, reporting the line number of a broken line.
pub fn parse_jsonl(label: &str, text: &str) -> Result<Vec<(usize, serde_json::Value)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => out.push((i + 1, v)),
            Ok(_) => fail!(Input, "{label}: line {} is not a JSON object", i + 1),
            Err(e) => fail!(Input, "{label}: line {} is not valid JSON: {e}", i + 1),
        }
    }
    Ok(out)
}

/// Read an evaluation/calibration text: a plain file as one string, or JSONL whose records'
/// `text` fields are joined with blank lines.
pub fn read_text(path: &Path) -> Result<TextSource> {
    let (text, sha256) = read_utf8(path, "text file")?;
    let label = path.display().to_string();
    if looks_like_jsonl(path, &text) {
        let recs = parse_jsonl(&label, &text)?;
        let mut parts = Vec::with_capacity(recs.len());
        for (line, r) in &recs {
            match r.get("text").and_then(|t| t.as_str()) {
                Some(t) => parts.push(t),
                None => fail!(Input, "{label}: line {line} has no string field \"text\""),
            }
        }
        let joined = parts.join("\n\n");
        if joined.trim().is_empty() {
            fail!(Input, "{label}: no text in any record");
        }
        return Ok(TextSource {
            text: joined,
            label,
            sha256,
            format: "jsonl",
            records: recs.len(),
        });
    }
    if text.trim().is_empty() {
        fail!(Input, "text file {label} is empty");
    }
    Ok(TextSource {
        text,
        label,
        sha256,
        format: "text",
        records: 1,
    })
}

/// Held-out demo text (`valid.txt` of the demo corpus, embedded in the binary): the default
/// evaluation text.
pub const EVAL_TEXT: &str = include_str!("../../assets/demo-text/valid.txt");
pub const EVAL_TEXT_LABEL: &str = "builtin:demo-valid";

/// The built-in evaluation text.
pub fn builtin_eval_text() -> TextSource {
    let text = EVAL_TEXT.to_string();
    TextSource {
        sha256: crate::util::sha256_hex(text.as_bytes()),
        text,
        label: EVAL_TEXT_LABEL.into(),
        format: "text",
        records: 1,
    }
}

/// Tokenize without special tokens (the perplexity protocol).
pub fn encode_plain(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok
        .encode_fast(text, false)
        .map_err(|e| crate::error::err(Kind::Input, format!("tokenizing: {e}")))?;
    Ok(enc.get_ids().to_vec())
}
