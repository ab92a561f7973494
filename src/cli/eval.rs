use super::{output, ModelArgs};
use crate::data;
use crate::eval::perplexity;
use anyhow::Result;
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to evaluate: plain text, or JSONL with a "text" field (records joined by blank
    /// lines). Default: the built-in held-out demo text.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Window length in tokens (default: 512; 256 for the built-in demo model, its training
    /// context).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Evaluate only the first N windows.
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Print one JSON object with the result and its full protocol.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    let req = a.model.request()?;
    let src = match &a.text {
        Some(p) => data::read_text(p)?,
        None => data::builtin_eval_text(),
    };
    let loaded = crate::source::load(&req)?;
    let ids = data::encode_plain(&loaded.tokenizer, &src.text)?;
    let seq_len = a.seq_len.unwrap_or(match loaded.origin {
        crate::source::Origin::Builtin { .. } => 256,
        _ => 512,
    });
    let pb = output::bar(0, "windows", false);
    let r = perplexity::perplexity(&loaded.model, &ids, seq_len, a.max_windows, |i, n| {
        pb.set_length(n as u64);
        pb.set_position(i as u64);
    })?;
    pb.finish_and_clear();
    if a.json {
        output::print_json(&json!({
            "command": "eval",
            "model": loaded.origin,
            "config_sha256": loaded.config_sha256,
            "text": {"file": src.label, "sha256": src.sha256, "format": src.format, "records": src.records},
            "dtype": super::dtype_name(req.dtype),
            "compute_dtype": "f32",
            "device": a.model.device,
            "seq_len": r.seq_len,
            "windows": r.windows,
            "available_windows": r.available_windows,
            "tokens": r.tokens,
            "predicted_tokens": r.predicted,
            "mean_nll": r.mean_nll,
            "ppl": r.ppl,
            "per_window_nll": r.per_window_nll,
            "seconds": r.seconds,
            "sparc3_version": env!("CARGO_PKG_VERSION"),
        }));
    } else {
        outln!("model       {}", loaded.origin.label());
        outln!("text        {} (sha256 {})", src.label, &src.sha256[..16]);
        outln!("tokens      {}", r.tokens);
        outln!(
            "windows     {} of {} (seq_len {})",
            r.windows,
            r.available_windows,
            r.seq_len
        );
        outln!("mean NLL    {:.6}", r.mean_nll);
        outln!("perplexity  {:.4}", r.ppl);
        outln!("seconds     {:.2}", r.seconds);
    }
    Ok(())
}
