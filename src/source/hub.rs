//! Hub ids (`org/name[@revision]`): the local Hugging Face cache first, a download otherwise.
//! Offline (`--offline` or `HF_HUB_OFFLINE=1`) never touches the network and names the missing file.

use crate::error::{Kind, Tag};
use crate::fail;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

impl HubId {
    /// Parse `org/name` or `org/name@rev`; None when the string does not look like a hub id.
    pub fn parse(s: &str) -> Option<HubId> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, v)) if !v.is_empty() => (r, v.to_string()),
            Some(_) => return None,
            None => (s, "main".to_string()),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let ok_part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.len() == 2 && parts.iter().all(|p| ok_part(p)) {
            Some(HubId {
                repo: repo.to_string(),
                revision,
            })
        } else {
            None
        }
    }

    pub fn folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

/// The hub cache directory: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

pub fn offline_from_env() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE")
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Ok("1") | Ok("true") | Ok("yes") | Ok("on")
    )
}

/// A snapshot folder of the cache (files are symlinks into blobs/ or plain files).
pub struct Snapshot {
    pub dir: PathBuf,
    pub commit: String,
}

/// Find the cached snapshot of a revision: a branch/tag name through `refs/`, or a commit hash.
pub fn cached_snapshot(cache: &Path, id: &HubId) -> Option<Snapshot> {
    let repo_dir = cache.join(id.folder_name());
    let refs = repo_dir.join("refs").join(&id.revision);
    let commit = match std::fs::read_to_string(&refs) {
        Ok(c) => c.trim().to_string(),
        Err(_) => id.revision.clone(),
    };
    let dir = repo_dir.join("snapshots").join(&commit);
    dir.is_dir().then_some(Snapshot { dir, commit })
}

/// Files of a model repo that sparc3 needs, resolved to local paths (downloading if allowed).
pub struct HubFiles {
    pub dir: PathBuf,
    pub commit: String,
}

pub fn resolve(id: &HubId, offline: bool) -> Result<HubFiles> {
    let cache = cache_dir();
    if let Some(snap) = cached_snapshot(&cache, id) {
        if complete(&snap.dir).is_ok() {
            return Ok(HubFiles {
                dir: snap.dir,
                commit: snap.commit,
            });
        }
    }
    if offline {
        let Some(snap) = cached_snapshot(&cache, id) else {
            fail!(
                Input,
                "offline: {id} is not in the Hugging Face cache at {} (no snapshot for revision '{}'); run once online or use a local model directory",
                cache.display(),
                id.revision
            );
        };
        let missing = complete(&snap.dir).unwrap_err();
        fail!(
            Input,
            "offline: {missing} of {id} is missing from the Hugging Face cache ({})",
            snap.dir.display()
        );
    }
    download(id, &cache)
}

/// Ok if the snapshot folder holds config, tokenizer and all weight files; Err(name of the first
/// missing file) otherwise.
fn complete(dir: &Path) -> std::result::Result<(), String> {
    for f in ["config.json", "tokenizer.json"] {
        if !dir.join(f).is_file() {
            return Err(f.to_string());
        }
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .map_err(|_| "model.safetensors.index.json".to_string())?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|_| "model.safetensors.index.json (unreadable)".to_string())?;
        if let Some(m) = v.get("weight_map").and_then(|m| m.as_object()) {
            for f in m.values().filter_map(|f| f.as_str()) {
                if !dir.join(f).is_file() {
                    return Err(f.to_string());
                }
            }
        }
        Ok(())
    } else if dir.join("model.safetensors").is_file() {
        Ok(())
    } else {
        Err("model.safetensors".to_string())
    }
}

fn download(id: &HubId, cache: &Path) -> Result<HubFiles> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let api = ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()))
        .with_progress(true)
        .build()
        .context("setting up the Hugging Face hub client")
        .tag(Kind::Input)?;
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision.clone(),
    ));
    let info = repo
        .info()
        .with_context(|| format!("looking up {id} on the Hugging Face hub (without network, work offline from a populated cache or use a local directory)"))
        .tag(Kind::Input)?;
    let files: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let mut wanted = vec!["config.json".to_string(), "tokenizer.json".to_string()];
    if files.iter().any(|f| f == "model.safetensors.index.json") {
        wanted.push("model.safetensors.index.json".into());
    } else if files.iter().any(|f| f == "model.safetensors") {
        wanted.push("model.safetensors".into());
    } else {
        fail!(
            Input,
            "{id} has no safetensors weights (model.safetensors or an index)"
        );
    }
    let mut dir = None;
    for f in &wanted {
        let p = repo
            .get(f)
            .with_context(|| format!("downloading {f} of {id}"))
            .tag(Kind::Input)?;
        dir = p.parent().map(Path::to_path_buf);
    }
    let dir = dir.expect("at least one file");
    if wanted.iter().any(|f| f == "model.safetensors.index.json") {
        let (_, shard_of) = super::weights::safetensors_files(&dir)
            .ok()
            .unwrap_or_default();
        let mut shards: Vec<&String> = shard_of.values().collect();
        shards.sort();
        shards.dedup();
        for s in shards {
            repo.get(s)
                .with_context(|| format!("downloading {s} of {id}"))
                .tag(Kind::Input)?;
        }
    }
    Ok(HubFiles {
        dir,
        commit: info.sha,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids() {
        assert_eq!(
            HubId::parse("HuggingFaceTB/SmolLM2-135M"),
            Some(HubId {
                repo: "HuggingFaceTB/SmolLM2-135M".into(),
                revision: "main".into()
            })
        );
        assert_eq!(HubId::parse("a/b@v1.0").unwrap().revision, "v1.0");
        assert!(HubId::parse("a/b@").is_none());
        assert!(HubId::parse("a/b/c").is_none());
        assert!(HubId::parse("../x").is_none());
        assert!(HubId::parse("noslash").is_none());
    }
}
