//! `merge`: combine the relevance files of a sharded `attribute` run.

use super::{DataRef, Provenance};
use crate::lrp::file::{RelMeta, RelevanceFile};
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
    pub file: RelevanceFile,
}

/// Read and merge `files` (weighted by sample count; files of other runs are refused).
pub fn run(files: &[PathBuf], out: Option<PathBuf>) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let read = files
        .iter()
        .map(|p| Ok((p.display().to_string(), RelevanceFile::read(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let file = RelevanceFile::merge(read)?;
    // Every shard attributed the same calibration data (merge refuses anything else).
    let m = &file.meta;
    let data = vec![DataRef::new("calibration", &m.data_file, &m.data_sha256)];
    let mut provenance = Provenance::without_model("merge", data, start);
    provenance.config_sha256 = Some(file.meta.config_sha256.clone());
    Ok(Outcome {
        report: Report {
            provenance,
            out,
            files: files.to_vec(),
            meta: file.meta.clone(),
        },
        file,
    })
}
