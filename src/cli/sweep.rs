//! `sparc3 sweep`: flags → `jobs::sweep::Config`; writes the report and chart, prints the table.

use super::args::{ModelArgs, OutArgs};
use super::compress::PruneArgs;
use super::output::{print_json, Bar};
use super::values::one_of;
use crate::jobs::sweep::{self, Config, Report};
use crate::prune::method::Method;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sparsities to prune to, comma-separated, each in (0, 1).
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        default_value = "0.1,0.2,0.3,0.4,0.5,0.6,0.7"
    )]
    pub ratios: Vec<f64>,
    /// Methods compared, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lrp,wanda,magnitude",
        value_parser = one_of(Method::COMPRESS)
    )]
    pub methods: Vec<Method>,
    #[command(flatten)]
    pub prune: PruneArgs,
    /// Directory for `sweep-report.json` and `sweep.svg`.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub output: OutArgs,
}

impl SweepArgs {
    fn config(&self) -> Result<Config> {
        let cfg = Config {
            ratios: self.ratios.clone(),
            methods: self.methods.clone(),
            prune: self.prune.setup(self.output.force)?,
        };
        sweep::ratios(&cfg)?;
        Ok(cfg)
    }
}

pub fn run(a: SweepArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    let cfg = a.config()?;
    let loaded = a.model.load()?;
    let force = a.output.force;
    let inputs = a.prune.inputs(&a.model);
    crate::io::hf::check_out(&a.out, force, loaded.origin.dir(), &inputs)?;
    let o = sweep::run(&loaded, &cfg, &Bar::default())?;
    crate::util::fs::atomic_dir(&a.out, force, |dir| {
        for (name, bytes) in &o.files {
            crate::util::fs::write_in(dir, name, bytes)?;
        }
        Ok(())
    })?;
    if a.output.json {
        print_json(&o.report);
    } else {
        print(&o.report, &a.out);
    }
    Ok(())
}

fn print(r: &Report, out: &std::path::Path) {
    out!("{:<8}", "ratio");
    for s in &r.series {
        out!(" {:>12}", s.method.name());
    }
    outln!();
    outln!("{:<8} {:>12.4}  (dense)", "0", r.ppl_dense);
    let ratios = r.series.first().map_or(&[][..], |s| &s.points[..]);
    for (i, p) in ratios.iter().enumerate() {
        out!("{:<8}", p.ratio);
        for s in &r.series {
            out!(" {:>12.4}", s.points[i].ppl);
        }
        outln!();
    }
    let e = r.protocol.eval.as_ref();
    outln!(
        "perplexity on {} ({} windows of {}); wrote {}, {:.0} s",
        e.map_or("-", |e| e.file.as_str()),
        e.and_then(|e| e.windows).unwrap_or(0),
        e.map_or(0, |e| e.seq_len),
        out.display(),
        r.provenance.seconds
    );
}
