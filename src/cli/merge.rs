use super::output;
use crate::lrp::file::RelevanceFile;
use anyhow::Result;
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Relevance files of the shards of one `attribute` run.
    #[arg(required = true, num_args = 2..)]
    pub files: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: MergeArgs) -> Result<()> {
    crate::io::check_output(&a.out, a.force, &a.files)?;
    let files = a
        .files
        .iter()
        .map(|p| Ok((p.display().to_string(), RelevanceFile::read(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let merged = RelevanceFile::merge(files)?;
    merged.write(&a.out)?;
    let m = &merged.meta;
    if a.json {
        output::print_json(&json!({"command": "merge", "out": a.out, "meta": m}));
    } else {
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
    }
    Ok(())
}
