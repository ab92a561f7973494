//! `merge`: combine the relevance files of a sharded `attribute` run.

use super::{DataRef, Provenance};
use crate::lrp::file::{RelMeta, RelevanceFile};
use crate::lrp::staged::Output;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `merge --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub out: Option<PathBuf>,
    pub files: Vec<PathBuf>,
    /// The merged file's metadata.
    pub meta: RelMeta,
}

pub struct Outcome {
    pub report: Report,
    pub file: Output,
}

/// Read and merge `files` (weighted by sample count; files of other runs are refused).
pub fn run(files: &[PathBuf], out: Option<PathBuf>) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let (meta, file) = match &out {
        // Tensor by tensor into the output: shards of a large model need not fit in memory.
        Some(o) => {
            let inputs: Vec<(String, &std::path::Path)> = files
                .iter()
                .map(|p| (p.display().to_string(), p.as_path()))
                .collect();
            let (meta, staged) = crate::lrp::file::merge_into(&inputs, o)?;
            (meta, Output::Staged(staged))
        }
        None => {
            let read = files
                .iter()
                .map(|p| Ok((p.display().to_string(), RelevanceFile::read(p)?)))
                .collect::<Result<Vec<_>>>()?;
            let f = RelevanceFile::merge(read)?;
            (f.meta.clone(), Output::Memory(f))
        }
    };
    // Every shard attributed the same calibration data (merge refuses anything else).
    let m = &meta;
    let data = vec![DataRef::new("calibration", &m.data_file, &m.data_sha256)];
    let mut provenance = Provenance::without_model("merge", data, start);
    provenance.config_sha256 = Some(meta.config_sha256.clone());
    Ok(Outcome {
        report: Report {
            provenance,
            out,
            files: files.to_vec(),
            meta,
        },
        file,
    })
}
