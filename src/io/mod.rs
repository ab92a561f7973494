//! Output writing: checks on output paths, the Hugging Face model writer and SVG charts. Every
//! file is written through [`crate::util::fs`] (temporary name, fsync, rename), so a reader
//! never sees a half-written output.

pub mod hf;
pub mod svg;

use crate::error::{self, Kind, Remedy};
use crate::fail;
use crate::util::fs::{parent_dir, probe_writable};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Refuse to write over an existing path unless `force`, or over one of `inputs`.
pub fn check_output(out: &Path, force: bool, inputs: &[PathBuf]) -> Result<()> {
    let canon_out = canonical_target(out);
    for i in inputs {
        if let (Ok(a), Some(b)) = (i.canonicalize(), canon_out.as_ref()) {
            if &a == b {
                fail!(
                    Usage,
                    "output {} is one of the inputs ({}); refusing to overwrite it",
                    out.display(),
                    i.display()
                );
            }
        }
    }
    if out.exists() && !force {
        let msg = format!("{} already exists", out.display());
        return Err(error::with_remedy(Kind::Output, msg, Remedy::Replace));
    }
    if out.is_dir() {
        fail!(
            Output,
            "{} is a directory, expected a file path",
            out.display()
        );
    }
    let parent = parent_dir(out);
    if !parent.is_dir() {
        fail!(Output, "directory {} does not exist", parent.display());
    }
    probe_writable(&parent)
}

/// Canonical form of a path that may not exist yet (its parent must).
fn canonical_target(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let parent = parent_dir(p).canonicalize().ok()?;
    Some(parent.join(p.file_name()?))
}
