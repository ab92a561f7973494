//! Command-line interface: argument types, dispatch, output. No numerics here.

/// `print!`/`println!` for results on stdout: a reader that closed the pipe early
/// (`sparc3 info | head -3`) ends the process quietly with the shell's broken-pipe status, 141,
/// instead of a panic. Results are printed after every output file is in place.
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::output::write_stdout(format_args!($($t)*), false) };
}
macro_rules! outln {
    () => { $crate::cli::output::write_stdout(format_args!(""), true) };
    ($($t:tt)*) => { $crate::cli::output::write_stdout(format_args!($($t)*), true) };
}

mod attribute;
mod circuit;
mod compress;
mod correct;
mod eval;
mod info;
mod merge;
pub mod output;
mod sweep;

use crate::source::ModelRequest;
use anyhow::Result;
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const EXIT_CODES: &str = "Exit codes: 0 ok; 1 internal error; 2 invalid arguments; 3 bad input (model, data, scores); 4 cannot write output; 5 insufficient resources; 130 interrupted; 141 stdout closed early (broken pipe).";

#[derive(Parser, Debug)]
#[command(
    name = "sparc3",
    version,
    about = "Attribution-guided pruning of LLMs with AttnLRP: compression, circuit discovery, targeted correction",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Perplexity of a model on a text (non-overlapping windows from token 0).
    Eval(eval::EvalArgs),
    /// Architecture, sizes and the prunable linear layers of a model.
    Info(info::InfoArgs),
    /// AttnLRP (or gradient) relevance of every prunable weight over calibration samples.
    Attribute(attribute::AttributeArgs),
    /// Prune a model to a target sparsity (LRP, gradient, Wanda, magnitude, SparseGPT) and write it in HF layout.
    Compress(compress::CompressArgs),
    /// Perplexity against sparsity for several methods (one attribution per method reused for
    /// every ratio): a table, `sweep-report.json` and `sweep.svg`.
    Sweep(sweep::SweepArgs),
    /// Find the sparse sub-network that carries a task (IOI built in, or a task file).
    Circuit(circuit::CircuitArgs),
    /// Remove the weights behind an unwanted behaviour (e.g. toxic continuations), keeping
    /// general ability; evaluated on held-out prompts.
    Correct(correct::CorrectArgs),
    /// Combine the relevance files of a sharded `attribute` run.
    Merge(merge::MergeArgs),
}

/// Options shared by every command that loads a model.
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
    /// Storage dtype of the weights: f32, f16 or bf16 (compute is f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    pub fn request(&self) -> Result<ModelRequest> {
        Ok(ModelRequest {
            model: self.model.clone(),
            tokenizer: self.tokenizer.clone(),
            offline: self.offline,
            device: parse_device(&self.device)?,
            dtype: parse_dtype(&self.dtype)?,
        })
    }
}

pub fn parse_dtype(s: &str) -> Result<DType> {
    parse_dtype_flag(s, "--dtype")
}

pub fn parse_dtype_flag(s: &str, flag: &str) -> Result<DType> {
    Ok(match s {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => crate::fail!(Usage, "{flag} {other}: expected f32, f16 or bf16"),
    })
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

pub fn parse_device(s: &str) -> Result<Device> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => crate::fail!(Usage, "--device {s}: expected cpu, cuda or cuda:N"),
        },
        None => crate::fail!(Usage, "--device {s}: expected cpu, cuda or cuda:N"),
    };
    if !candle_core::utils::cuda_is_available() {
        crate::fail!(
            Resource,
            "--device {s}: this sparc3 was built without CUDA support (rebuild with `--features cuda`)"
        );
    }
    match Device::new_cuda(ordinal) {
        Ok(d) => Ok(d),
        Err(e) => crate::fail!(Resource, "--device {s}: {e}"),
    }
}

/// Set the worker thread count for rayon and candle's matmuls (before any parallel work).
pub fn set_threads(n: Option<usize>) -> Result<()> {
    if let Some(n) = n {
        if n == 0 {
            crate::fail!(Usage, "--threads must be at least 1");
        }
        // candle's CPU kernels read RAYON_NUM_THREADS; rayon's global pool is built once.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
        crate::kernels::gemm::set_threads(n);
    }
    Ok(())
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Eval(a) => eval::run(a),
        Command::Info(a) => info::run(a),
        Command::Attribute(a) => attribute::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Circuit(a) => circuit::run(a),
        Command::Correct(a) => correct::run(a),
        Command::Compress(a) => compress::run(a),
        Command::Sweep(a) => sweep::run(a),
    }
}

/// Component scores for the jobs that rank components (`circuit`, `correct`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScoreArg {
    /// AttnLRP relevance of the job's target.
    Lrp,
    /// |W ⊙ ∇W| (|x ⊙ ∇x| for units) of the same target.
    Gradient,
    /// |W|·‖X_j‖₂ (units: ‖X_unit‖₂·‖W[:, unit]‖_F).
    Wanda,
    /// |W|·mean|x_j| (units: mean |activation|).
    Activation,
}

/// The requested score methods, duplicates dropped, in order.
pub fn score_methods(args: &[ScoreArg]) -> Vec<crate::prune::ranking::Method> {
    use crate::prune::ranking::Method;
    let mut v: Vec<Method> = Vec::new();
    for a in args {
        let m = match a {
            ScoreArg::Lrp => Method::Lrp,
            ScoreArg::Gradient => Method::Gradient,
            ScoreArg::Wanda => Method::Wanda,
            ScoreArg::Activation => Method::Activation,
        };
        if !v.contains(&m) {
            v.push(m);
        }
    }
    v
}

/// `--layers REGEX`, checked.
pub fn parse_layers(r: &Option<String>) -> Result<Option<regex::Regex>> {
    match r {
        Some(r) => match regex::Regex::new(r) {
            Ok(r) => Ok(Some(r)),
            Err(e) => crate::fail!(Usage, "--layers {r}: invalid regex: {e}"),
        },
        None => Ok(None),
    }
}

/// sha256 of a value's JSON (fingerprints of token ids and protocols).
pub fn sha256_json<T: serde::Serialize>(v: &T) -> String {
    crate::source::sha256_hex(serde_json::to_string(v).unwrap_or_default().as_bytes())
}

/// Checkpoint flags of the jobs that attribute on the way (`circuit`, `correct`).
#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    /// Save each attribution's accumulators every N samples to `<out>.<method>-<set>.ckpt`
    /// (also when interrupted); removed once the output is written.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Continue a killed run's attributions from their checkpoints (same flags and inputs).
    #[arg(long)]
    pub resume: bool,
}

impl ResumeArgs {
    pub fn check(&self) -> Result<()> {
        if self.checkpoint_every == Some(0) {
            crate::fail!(Usage, "--checkpoint-every must be at least 1");
        }
        Ok(())
    }

    /// The attribution options of one (method, set) attribution writing to `out`;
    /// `protocol` is everything that decides its result (fingerprinted, so a checkpoint of
    /// another run is refused).
    pub fn attr_run(
        &self,
        out: Option<&std::path::Path>,
        tag: &str,
        protocol: &serde_json::Value,
        force_memory: bool,
    ) -> crate::prune::ranking::AttrRun {
        let checkpoint = match out {
            Some(o) if self.checkpoint_every.is_some() || self.resume => {
                let mut p = o.as_os_str().to_owned();
                p.push(format!(".{tag}.ckpt"));
                Some(crate::lrp::checkpoint::Checkpoint {
                    path: PathBuf::from(p),
                    every: self.checkpoint_every.unwrap_or(0),
                    fingerprint: sha256_json(
                        &serde_json::json!({"tag": tag, "protocol": protocol}),
                    ),
                })
            }
            _ => None,
        };
        crate::prune::ranking::AttrRun {
            checkpoint,
            resume: self.resume,
            force_memory,
        }
    }
}
