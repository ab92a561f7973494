//! Command-line interface: flags → a job's `Config` → the job → written outputs and printed
//! results. No numerics here; flag names appear in errors only here.

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

mod args;
mod attribute;
mod circuit;
mod compress;
mod correct;
pub mod docs;
mod eval;
mod info;
mod merge;
pub mod output;
mod sweep;
mod tables;
pub mod values;

use crate::error::Setting;
use anyhow::Result;
use clap::{Parser, Subcommand};

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
    Eval(eval::EvalCmd),
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

pub fn run(cli: Cli) -> Result<()> {
    // Where a command spells a value's flag differently from the others.
    let flags: &[(Setting, &str)] = match &cli.command {
        Command::Eval(_) => &[
            (Setting::EvalSeqLen, "--seq-len"),
            (Setting::EvalWindows, "--max-windows"),
        ],
        Command::Correct(_) => &[(Setting::Samples, "--general-samples")],
        _ => &[],
    };
    let r = match cli.command {
        Command::Eval(a) => eval::run(a),
        Command::Info(a) => info::run(a),
        Command::Attribute(a) => attribute::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Circuit(a) => circuit::run(a),
        Command::Correct(a) => correct::run(a),
        Command::Compress(a) => compress::run(a),
        Command::Sweep(a) => sweep::run(a),
    };
    r.map_err(|e| name_flag(e, flags))
}

/// A job's error about one chosen value, re-worded with the flag that sets it (`flags`: this
/// command's own spellings); a remedy is said with the flags that apply it.
fn name_flag(e: anyhow::Error, flags: &[(Setting, &str)]) -> anyhow::Error {
    crate::error::reword(e, |setting, remedy, msg| {
        if setting.is_none() && remedy.is_none() {
            return None;
        }
        let flag = setting.map_or(String::new(), |s| {
            let f = flags.iter().find(|f| f.0 == s);
            format!("{} ", f.map_or(values::flag_of(s), |f| f.1))
        });
        let remedy = remedy.map_or("", values::remedy_flags);
        Some(format!("{flag}{msg}{remedy}"))
    })
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
