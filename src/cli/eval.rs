//! `sparc3 eval`: flags → `jobs::eval::Config`; prints the perplexity.

use super::args::ModelArgs;
use super::output::{print_json, Bar};
use crate::jobs::eval::{self, Config, Report};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalCmd {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to evaluate: plain text, or JSONL with a "text" field (records joined by blank
    /// lines). Default: the built-in held-out demo text.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Window length in tokens (default: 512, or the model's limit; 256 for the built-in demo
    /// model, its training context).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Evaluate only the first N windows.
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Print one JSON document with the result and its whole protocol (one line unless stdout
    /// is a terminal).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: EvalCmd) -> Result<()> {
    super::set_threads(a.model.threads)?;
    let cfg = Config {
        text: a.text.clone(),
        seq_len: a.seq_len,
        max_windows: a.max_windows,
    };
    let src = eval::read_text(&cfg)?;
    let loaded = a.model.load()?;
    let r = eval::run(&loaded, &cfg, &src, &Bar::default())?;
    if a.json {
        print_json(&r);
    } else {
        print(&r);
    }
    Ok(())
}

fn print(r: &Report) {
    let label = r.provenance.model.as_ref().map(|m| m.label());
    outln!("model       {}", label.unwrap_or_default());
    outln!(
        "text        {} (sha256 {})",
        r.text.file,
        &r.text.sha256[..16]
    );
    outln!("tokens      {}", r.tokens);
    outln!(
        "windows     {} of {} (seq_len {})",
        r.windows,
        r.available_windows,
        r.seq_len
    );
    outln!("mean NLL    {:.6}", r.mean_nll);
    outln!("perplexity  {:.4}", r.ppl);
    outln!("seconds     {:.2}", r.provenance.seconds);
}
