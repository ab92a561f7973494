use super::{output, ModelArgs};
use anyhow::Result;
use clap::Args;
use serde_json::json;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    let req = a.model.request()?;
    let loaded = crate::source::load(&req)?;
    let m = &loaded.model;
    let linears: Vec<_> = m
        .linears()
        .into_iter()
        .map(|l| json!({"name": l.name, "shape": l.weight.dims(), "bias": l.bias.is_some()}))
        .collect();
    let prunable: usize = m.linears().iter().map(|l| l.weight.elem_count()).sum();
    if a.json {
        output::print_json(&json!({
            "model": loaded.origin,
            "config_sha256": loaded.config_sha256,
            "dims": m.dims,
            "parameters": m.parameter_count(),
            "prunable_weights": prunable,
            "tied_embeddings": m.tied,
            "dtype": super::dtype_name(loaded.store.disk_dtype()),
            "linears": linears,
            "device": format!("{:?}", m.device),
            "cpu_matmul": crate::kernels::gemm::backend(),
        }));
        return Ok(());
    }
    let d = &m.dims;
    outln!("model          {}", loaded.origin.label());
    outln!("architecture   {}", d.arch);
    outln!(
        "parameters     {} (tied embedding counted once: {})",
        m.parameter_count(),
        m.tied
    );
    outln!(
        "prunable       {prunable} weights in {} linear layers",
        m.linears().len()
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
    outln!(
        "dtype          {} on disk",
        super::dtype_name(loaded.store.disk_dtype())
    );
    outln!(
        "device         {:?} (CPU matrix products: {})",
        m.device,
        crate::kernels::gemm::backend()
    );
    outln!("prunable linear layers:");
    for l in m.linears() {
        let s = l.weight.dims();
        outln!(
            "  {:<48} [{}, {}]{}",
            l.name,
            s[0],
            s[1],
            if l.bias.is_some() { " +bias" } else { "" }
        );
    }
    Ok(())
}
