//! Argument groups shared by several commands (flattened into each command's flags), so a
//! flag means the same thing, with the same default, everywhere.

use super::values::{self, one_of, TargetKind};
use crate::error::Kind;
use crate::fail;
use crate::jobs::prepare::{CalibConfig, PplConfig};
use crate::jobs::Resume;
use crate::lrp::Target;
use crate::relevance::accum::Aggregation;
use crate::source::ModelRequest;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Options of every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a local HF directory, a .gguf file, a hub id `org/name[@revision]`, or
    /// `builtin:demo-llama` (the default).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// tokenizer.json to use instead of the one beside the model.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Never touch the network (also: HF_HUB_OFFLINE=1); hub ids must be in the local cache.
    #[arg(long)]
    pub offline: bool,
    /// cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Storage dtype of the weights in memory: auto (the checkpoint's own: bf16 stays bf16), f32,
    /// f16 or bf16. Compute is f32 on CPU (weights are converted layer by layer at use).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// Load the model (after `set_threads`).
    pub fn load(&self) -> Result<crate::source::Loaded> {
        let req = ModelRequest {
            model: self.model.clone(),
            tokenizer: self.tokenizer.clone(),
            offline: self.offline,
            device: values::parse_device(&self.device)?,
            dtype: values::parse_storage_dtype(&self.dtype)?,
        };
        crate::source::load(&req)
    }
}

/// Calibration flags of `compress` and `sweep`.
#[derive(Args, Debug)]
pub struct CalibArgs {
    /// Calibration data (text, JSONL text records, or JSONL ids records). Default: built-in text.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Tokens per calibration sample (default 512, or the model's limit; 256 for the demo).
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// What LRP/gradient relevance explains (next-token-logprob measured best for compression;
    /// docs/results).
    #[arg(long, default_value = "next-token-logprob", value_parser = one_of(TargetKind::COMPRESS))]
    pub target: TargetKind,
    /// How LRP/gradient weight relevance is aggregated over tokens and samples (token-sq with
    /// the log-probability target, an empirical Fisher, measured best for compression).
    #[arg(long, value_enum, default_value = "token-sq")]
    pub aggregation: Aggregation,
}

impl CalibArgs {
    pub fn config(&self) -> CalibConfig {
        CalibConfig {
            file: self.calib.clone(),
            samples: self.samples,
            seq_len: self.seq_len,
            seed: self.seed,
            target: match self.target {
                TargetKind::NextToken => Target::NextToken,
                TargetKind::NextTokenLogprob => Target::NextTokenLogprob,
                _ => Target::Last { token: None },
            },
            aggregation: self.aggregation,
        }
    }
}

/// Perplexity flags of `compress`, `sweep` and `correct`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Perplexity text evaluated before and after (default for the built-in model: its
    /// held-out text).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Windows of --eval-seq-len tokens to evaluate (default: all; 64 of the built-in text).
    #[arg(long)]
    pub eval_windows: Option<usize>,
    /// Tokens per window (default 512, or the model's limit; 256 for the demo).
    #[arg(long)]
    pub eval_seq_len: Option<usize>,
}

impl EvalArgs {
    pub fn config(&self) -> PplConfig {
        PplConfig {
            file: self.eval.clone(),
            windows: self.eval_windows,
            seq_len: self.eval_seq_len,
        }
    }
}

/// Checkpoint flags of every command that attributes.
#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    /// Save the attribution's accumulators every N samples beside the output
    /// (`<out>.ckpt`; `<out>.<method>-<set>.ckpt` for circuit and correct), also when
    /// interrupted; removed once the output is written.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Continue a killed run from its checkpoints (same model, data and flags); the result
    /// equals an uninterrupted run's.
    #[arg(long)]
    pub resume: bool,
}

impl ResumeArgs {
    pub fn config(&self) -> Result<Resume> {
        if self.checkpoint_every == Some(0) {
            fail!(Usage, "--checkpoint-every must be at least 1");
        }
        Ok(Resume {
            every: self.checkpoint_every,
            resume: self.resume,
        })
    }
}

/// Output flags: the destination, overwriting, and `--json`.
#[derive(Args, Debug, Clone)]
pub struct OutArgs {
    /// Replace an existing output; also runs past the memory guard.
    #[arg(long)]
    pub force: bool,
    /// Print one JSON document with the result and its whole protocol (one line unless
    /// stdout is a terminal).
    #[arg(long)]
    pub json: bool,
}

/// Fail unless `x` is in (0, 1).
pub fn check_fraction(x: f64, flag: &str) -> Result<()> {
    if !(x > 0.0 && x < 1.0) {
        return Err(crate::error::err(
            Kind::Usage,
            format!("{flag} must be in (0, 1), got {x}"),
        ));
    }
    Ok(())
}
