//! The jobs: what each command does, callable in process. A job takes a loaded model, a
//! validated `Config` (domain types, no flags) and a [`Progress`] sink, and returns an
//! `Outcome`: the typed report and the artefacts to write. Jobs read their inputs but never
//! write outputs or print; the CLI (or any other caller) writes the artefacts and prints.

pub mod attribute;
pub mod circuit;
pub mod compress;
pub mod correct;
pub mod eval;
pub mod info;
pub mod merge;
pub mod prepare;
pub mod report;
pub mod sweep;

pub use report::{DataRef, Provenance, SCHEMA_VERSION};

/// Where a job reports its progress. The CLI draws a bar on stderr; tests pass [`Quiet`].
pub trait Progress: Sync {
    /// A new stage with `len` steps (0: unknown).
    fn stage(&self, what: &str, len: u64);
    /// Replace the current stage's label.
    fn message(&self, what: &str);
    /// Position (and, when it becomes known, length) within the current stage.
    fn position(&self, pos: u64, len: Option<u64>);
    /// The current stage is over.
    fn done(&self);
    /// A remark for the user (a reused file's protocol differs, a fallback was taken, ...).
    fn note(&self, text: &str);
}

/// Progress that goes nowhere.
pub struct Quiet;

impl Progress for Quiet {
    fn stage(&self, _: &str, _: u64) {}
    fn message(&self, _: &str) {}
    fn position(&self, _: u64, _: Option<u64>) {}
    fn done(&self) {}
    fn note(&self, _: &str) {}
}

/// A file a job produced, to be written by the caller into the output location.
pub type Artefact = (String, Vec<u8>);

/// Which linear layers a job touches: all, or those whose name matches a regex.
#[derive(Clone, Debug, Default)]
pub struct LayerFilter(pub Option<regex::Regex>);

impl LayerFilter {
    pub fn selects(&self, name: &str) -> bool {
        self.0.as_ref().is_none_or(|r| r.is_match(name))
    }

    /// The regex as given, for reports.
    pub fn pattern(&self) -> Option<String> {
        self.0.as_ref().map(|r| r.as_str().to_string())
    }
}

/// `items` in order, repeats dropped (a list flag may name a method or criterion twice).
pub fn dedup<T: PartialEq + Copy>(items: &[T]) -> Vec<T> {
    let mut v: Vec<T> = Vec::new();
    for &x in items {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

/// sha256 of a value's JSON (fingerprints of token ids and protocols).
pub fn sha256_json<T: serde::Serialize>(v: &T) -> String {
    crate::util::sha256_hex(serde_json::to_string(v).unwrap_or_default().as_bytes())
}

/// Resumable attributions of a job: checkpoints every N samples and/or resuming.
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// Save the accumulators every N samples (None: only on a signal when resuming is asked).
    pub every: Option<usize>,
    pub resume: bool,
}

impl Resume {
    pub fn active(&self) -> bool {
        self.every.is_some() || self.resume
    }

    /// The checkpoint of a single attribution beside `out` (`<out>.ckpt`), fingerprinted by
    /// `protocol`; None unless checkpoints are asked for.
    pub fn beside(
        &self,
        out: Option<&std::path::Path>,
        protocol: &serde_json::Value,
    ) -> Option<crate::lrp::checkpoint::Checkpoint> {
        let path = crate::lrp::checkpoint::Checkpoint::path_for(out?);
        self.checkpoint_at(path, protocol)
    }

    fn checkpoint_at(
        &self,
        path: std::path::PathBuf,
        protocol: &serde_json::Value,
    ) -> Option<crate::lrp::checkpoint::Checkpoint> {
        self.active().then(|| crate::lrp::checkpoint::Checkpoint {
            path,
            every: self.every.unwrap_or(0),
            fingerprint: sha256_json(protocol),
        })
    }

    /// The attribution options of one (method, set) attribution writing beside `out`;
    /// `protocol` is everything that decides its result (fingerprinted, so a checkpoint of
    /// another run is refused).
    pub fn attr_run(
        &self,
        out: Option<&std::path::Path>,
        tag: &str,
        protocol: &serde_json::Value,
        force_memory: bool,
    ) -> crate::prune::ranking::AttrRun {
        let checkpoint = out.and_then(|o| {
            let mut p = o.as_os_str().to_owned();
            p.push(format!(".{tag}.ckpt"));
            self.checkpoint_at(
                p.into(),
                &serde_json::json!({"tag": tag, "protocol": protocol}),
            )
        });
        crate::prune::ranking::AttrRun {
            checkpoint,
            resume: self.resume,
            force_memory,
        }
    }
}

/// What the HF writer writes for `model`, a pruned copy of `loaded`'s: its config, tensors
/// (shards and dtypes) and tokenizer files.
pub fn model_contents<'a>(
    loaded: &'a crate::source::Loaded,
    model: &'a crate::model::DecoderModel,
) -> crate::io::hf::Contents<'a> {
    use crate::io::hf::{Contents, TokenizerFiles};
    use crate::source::{builtin, Origin};
    let tokenizer = match &loaded.origin {
        Origin::Builtin { .. } => {
            let mut files = vec![("tokenizer.json", builtin::tokenizer_json())];
            files.extend(builtin::EXTRA_FILES.iter().copied());
            TokenizerFiles::Embedded(files)
        }
        o => TokenizerFiles::Copied {
            dir: o.dir(),
            tokenizer: loaded.tokenizer_path.as_deref(),
        },
    };
    Contents {
        config: &loaded.config,
        store: &loaded.store,
        model,
        sharded: loaded.origin.sharded(),
        tokenizer,
    }
}

/// Remove the checkpoints of finished attributions (once the output is in place).
pub fn remove_checkpoints<'a>(
    checkpoints: impl IntoIterator<Item = &'a crate::lrp::checkpoint::Checkpoint>,
) {
    for c in checkpoints {
        c.remove();
    }
}

#[cfg(test)]
mod tests;
