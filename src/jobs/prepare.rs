//! What `compress` and `sweep` prepare before pruning (calibration samples, the evaluation
//! text), and the one place where sequence-length and window defaults are decided.

use super::DataRef;
use crate::eval::perplexity::{self, PplResult};
use crate::invalid;
use crate::lrp::file::{RelMeta, RelevanceReader};
use crate::lrp::Target;
use crate::model::DecoderModel;
use crate::relevance::accum::Aggregation;
use crate::source::{Loaded, Origin};
use crate::tasks::calib;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Defaults that depend on the model: the built-in demo was trained on 256-token windows and
/// ships its own held-out text; other models get 512 tokens (or their limit).
pub mod defaults {
    use super::*;

    pub fn is_builtin(loaded: &Loaded) -> bool {
        matches!(loaded.origin, Origin::Builtin { .. })
    }

    /// Tokens per window, for calibration and evaluation alike.
    pub fn seq_len(loaded: &Loaded) -> usize {
        let max = loaded.model.dims.max_positions;
        if is_builtin(loaded) {
            256.min(max)
        } else {
            512.min(max)
        }
    }

    /// Tokens per attribution sample: 512 or the model's limit, for the demo too (relevance
    /// files of one model are merged and compared across runs, so their default never depends
    /// on where the model came from).
    pub fn attribution_seq_len(loaded: &Loaded) -> usize {
        512.min(loaded.model.dims.max_positions)
    }

    /// Windows evaluated when none are asked for: 64 of the built-in held-out text, else all.
    pub fn eval_windows(loaded: &Loaded, text_given: bool) -> Option<usize> {
        (is_builtin(loaded) && !text_given).then_some(64)
    }
}

/// Calibration data for attribution-based and activation-based scores.
/// The settings `compress` and `sweep` share: how weights are grouped, what calibrates and
/// scores them, which layers are pruned and how the result is evaluated.
#[derive(Clone, Debug)]
pub struct PruneSetup {
    /// Grouping (None: each method's reference grouping).
    pub scope: Option<crate::prune::mask::Scope>,
    pub pattern: crate::prune::mask::Pattern,
    pub calib: CalibConfig,
    /// A relevance file standing in for the attribution of `lrp` or `gradient`.
    pub scores: Option<PathBuf>,
    pub layers: super::LayerFilter,
    pub eval: PplConfig,
    /// Run past the memory guard.
    pub force_memory: bool,
}

impl PruneSetup {
    /// The relevance file standing in for an attribution, opened (its tensors are read layer by
    /// layer when used).
    pub fn open_scores(&self) -> Result<Option<RelevanceReader>> {
        self.scores
            .as_deref()
            .map(RelevanceReader::open)
            .transpose()
    }
}

#[derive(Clone, Debug)]
pub struct CalibConfig {
    /// Text, JSONL text records or JSONL ids records (None: the built-in text).
    pub file: Option<PathBuf>,
    pub samples: usize,
    /// Tokens per sample (None: [`defaults::seq_len`]).
    pub seq_len: Option<usize>,
    pub seed: u64,
    /// What a fresh attribution explains.
    pub target: Target,
    /// How a fresh attribution aggregates weight relevance.
    pub aggregation: Aggregation,
}

/// The perplexity evaluation before and after pruning.
#[derive(Clone, Debug, Default)]
pub struct PplConfig {
    /// Text to evaluate (None: the built-in held-out text for the built-in model, else none).
    pub file: Option<PathBuf>,
    pub windows: Option<usize>,
    pub seq_len: Option<usize>,
}

/// The evaluation protocol, as reports record it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalInfo {
    pub file: String,
    pub sha256: String,
    pub seq_len: usize,
    pub windows: Option<usize>,
}

/// What decides a pruning run besides its method and ratio; shared by the `compress` and
/// `sweep` reports (flattened: the fields sit at the report's top level).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PruneProtocol {
    /// `unstructured` or `N:M`.
    pub pattern: String,
    pub layers_regex: Option<String>,
    pub calibration: Option<calib::CalibInfo>,
    pub scores_file: Option<PathBuf>,
    /// A reused relevance file's own protocol (data, samples, seq_len, seed, rule, shards).
    pub scores_protocol: Option<RelMeta>,
    /// What the relevance explains (a reused file's own target, as it records it).
    pub target: String,
    pub aggregation: Aggregation,
    pub eval: Option<EvalInfo>,
}

/// Calibration samples (when needed) and the evaluation text with its token ids.
pub struct Prepared {
    pub calib: Option<calib::Calib>,
    pub eval: Option<(crate::data::TextSource, Vec<u32>)>,
    pub eval_seq: usize,
    pub eval_windows: Option<usize>,
    pub target: Target,
    pub aggregation: Aggregation,
}

impl Prepared {
    pub fn new(loaded: &Loaded, c: &CalibConfig, e: &PplConfig, needs_calib: bool) -> Result<Self> {
        let model_max = loaded.model.dims.max_positions;
        let seq_len = c.seq_len.unwrap_or_else(|| defaults::seq_len(loaded));
        if seq_len > model_max {
            invalid!(
                SeqLen,
                "{seq_len} is larger than the model allows ({model_max} positions)"
            );
        }
        let calib = if needs_calib {
            Some(calib::sample(
                c.file.as_deref(),
                crate::data::builtin_eval_text,
                &loaded.tokenizer,
                c.samples,
                seq_len,
                c.seed,
            )?)
        } else {
            None
        };
        let eval_src = match (&e.file, defaults::is_builtin(loaded)) {
            (Some(p), _) => Some(crate::data::read_text(p)?),
            (None, true) => Some(crate::data::builtin_eval_text()),
            (None, false) => None,
        };
        let eval_seq = e.seq_len.unwrap_or_else(|| defaults::seq_len(loaded));
        if eval_seq > model_max {
            invalid!(
                EvalSeqLen,
                "{eval_seq} is larger than the model allows ({model_max} positions)"
            );
        }
        let eval = match eval_src {
            Some(s) => {
                let ids = crate::data::encode_plain(&loaded.tokenizer, &s.text)?;
                Some((s, ids))
            }
            None => None,
        };
        Ok(Self {
            calib,
            eval,
            eval_seq,
            eval_windows: e
                .windows
                .or(defaults::eval_windows(loaded, e.file.is_some())),
            target: c.target.clone(),
            aggregation: c.aggregation,
        })
    }

    pub fn samples(&self) -> &[Vec<u32>] {
        self.calib.as_ref().map_or(&[], |c| c.samples.as_slice())
    }

    /// Perplexity on the evaluation text, if there is one.
    pub fn ppl(&self, model: &DecoderModel) -> Result<Option<PplResult>> {
        match &self.eval {
            Some((_, ids)) => Ok(Some(perplexity::perplexity(
                model,
                ids,
                self.eval_seq,
                self.eval_windows,
                |_, _| {},
            )?)),
            None => Ok(None),
        }
    }

    /// The evaluation protocol for reports.
    pub fn eval_info(&self, windows: Option<usize>) -> Option<EvalInfo> {
        self.eval.as_ref().map(|(s, _)| EvalInfo {
            file: s.label.clone(),
            sha256: s.sha256.clone(),
            seq_len: self.eval_seq,
            windows,
        })
    }

    /// The protocol of a run with `pattern` over `layers`; `scores`: a reused relevance file
    /// (its target and aggregation are reported when `use_file_target`, else the fresh
    /// attribution's).
    pub fn protocol(
        &self,
        pattern: &crate::prune::mask::Pattern,
        layers: &super::LayerFilter,
        scores: Option<(&PathBuf, &RelevanceReader)>,
        use_file_target: bool,
        windows: Option<usize>,
    ) -> PruneProtocol {
        let file = scores.filter(|_| use_file_target).map(|s| &s.1.meta);
        PruneProtocol {
            pattern: pattern.name(),
            layers_regex: layers.pattern(),
            calibration: self.calib.as_ref().map(|c| c.info.clone()),
            scores_file: scores.map(|s| s.0.clone()),
            scores_protocol: scores.map(|s| s.1.meta.clone()),
            target: file.map_or(self.target.name().to_string(), |m| m.target.clone()),
            aggregation: file.map_or(self.aggregation, |m| m.aggregation),
            eval: self.eval_info(windows),
        }
    }

    /// The data inputs, for the provenance; a reused relevance file contributes the
    /// calibration data behind it.
    pub fn data_refs_with(&self, scores: Option<&RelevanceReader>) -> Vec<DataRef> {
        let mut v = self.data_refs();
        if let Some(r) = scores {
            v.push(DataRef::new(
                "calibration",
                &r.meta.data_file,
                &r.meta.data_sha256,
            ));
        }
        v
    }

    /// The data inputs, for the provenance.
    pub fn data_refs(&self) -> Vec<DataRef> {
        let mut v = Vec::new();
        if let Some(c) = &self.calib {
            v.push(DataRef::new("calibration", &c.info.file, &c.info.sha256));
        }
        if let Some((s, _)) = &self.eval {
            v.push(DataRef::new("eval", &s.label, &s.sha256));
        }
        v
    }
}
