//! `sparc3 merge`: combine the relevance files of a sharded `attribute` run.

use super::args::OutArgs;
use super::output::print_json;
use crate::jobs::merge;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Relevance files of the shards of one `attribute` run.
    #[arg(required = true, num_args = 2..)]
    pub files: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub output: OutArgs,
}

pub fn run(a: MergeArgs) -> Result<()> {
    crate::io::check_output(&a.out, a.output.force, &a.files)?;
    let o = merge::run(&a.files, Some(a.out.clone()))?;
    o.file.write(&a.out)?;
    let m = &o.report.meta;
    if a.output.json {
        print_json(&o.report);
        return Ok(());
    }
    outln!(
        "merged {} files: {} of {} samples, shards {:?} of {}; wrote {}",
        a.files.len(),
        m.samples,
        m.samples_total,
        m.shards,
        m.shard_count,
        a.out.display()
    );
    if m.shards.len() < m.shard_count {
        outln!(
            "note: {} of {} shards are still missing",
            m.shard_count - m.shards.len(),
            m.shard_count
        );
    }
    Ok(())
}
