//! The tokenizer shipped with a checkpoint, truncated to its vocabulary when needed.

use super::*;
use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fs::{self};
use std::path::Path;

/// Ids of the tokens to use as bos/eos: the first of a few conventional names the tokenizer
/// has below `vocab` (SmolLM2: <|im_start|> 1, <|im_end|> 2), else 0.
pub(crate) fn special_ids(tok: &Value, vocab: u64) -> (u64, u64) {
    let find = |n: &&str| token_id(tok, n).filter(|&i| i < vocab);
    let id = |names: &[&str]| names.iter().find_map(find).unwrap_or(0);
    let bos = id(&["<|begin_of_text|>", "<s>", "<|im_start|>", "<|endoftext|>"]);
    let eos = id(&["<|end_of_text|>", "</s>", "<|im_end|>", "<|endoftext|>"]);
    (bos, eos)
}

pub(crate) fn token_id(tok: &Value, content: &str) -> Option<u64> {
    let added = tok["added_tokens"].as_array().into_iter().flatten();
    let mut ids = added
        .filter(|t| t["content"] == content)
        .filter_map(|t| t["id"].as_u64());
    ids.next()
        .or_else(|| tok["model"]["vocab"][content].as_u64())
}

/// Max id + 1 over the model vocabulary and the added tokens.
pub(crate) fn tokenizer_vocab(tok: &Value) -> u64 {
    let model = tok["model"]["vocab"].as_object().into_iter().flatten();
    let added = tok["added_tokens"].as_array().into_iter().flatten();
    let ids = model.map(|(_, id)| id).chain(added.map(|t| &t["id"]));
    ids.filter_map(Value::as_u64).max().map_or(0, |i| i + 1)
}

/// Ships the tokenizer (truncated to `vocab` when it has more ids) and its side files, and
/// checks that it loads and encodes within the vocabulary.
pub(crate) fn write_tokenizer(mut tok: Value, src: &Path, vocab: usize, dir: &Path) -> Result<()> {
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
pub(crate) fn truncate_bpe(tok: &mut Value, vocab: u64) -> Result<()> {
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
