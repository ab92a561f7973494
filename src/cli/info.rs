//! `sparc3 info`: the model's architecture, sizes and prunable layers.

use super::args::ModelArgs;
use super::output::print_json;
use crate::jobs::info::{self, Report};
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON (one line unless stdout is a terminal).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    let loaded = a.model.load()?;
    let r = info::run(&loaded);
    if a.json {
        print_json(&r);
    } else {
        print(&r);
    }
    Ok(())
}

fn print(r: &Report) {
    let d = &r.dims;
    let label = r.provenance.model.as_ref().map(|m| m.label());
    outln!("model          {}", label.unwrap_or_default());
    outln!("architecture   {}", d.arch);
    outln!(
        "parameters     {} (tied embedding counted once: {})",
        r.parameters,
        r.tied_embeddings
    );
    outln!(
        "prunable       {} weights in {} linear layers",
        r.prunable_weights,
        r.linears.len()
    );
    outln!("layers         {}", d.layers);
    outln!("hidden         {}", d.hidden);
    outln!(
        "heads          {} query, {} key/value, head_dim {}",
        d.heads,
        d.kv_heads,
        d.head_dim
    );
    outln!("mlp width      {}", d.intermediate);
    outln!("vocab          {}", d.vocab);
    outln!("max positions  {}", d.max_positions);
    outln!("dtype          {} on disk", r.disk_dtype);
    outln!(
        "device         {} (CPU matrix products: {})",
        r.provenance.device,
        r.cpu_matmul
    );
    outln!("prunable linear layers:");
    for l in &r.linears {
        outln!(
            "  {:<48} [{}, {}]{}",
            l.name,
            l.shape[0],
            l.shape[1],
            if l.bias { " +bias" } else { "" }
        );
    }
}
