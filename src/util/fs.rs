//! Files written atomically: every file is written under a temporary name in its destination
//! directory, fsynced and renamed into place, so a reader never sees a half-written file; a
//! directory is built the same way. Temporary paths are registered with [`super::interrupt`].

use super::interrupt;
use crate::error::{Kind, Tag};
use crate::fail;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Fail now, not after hours of work, when nothing can be created in `dir` (read-only file
/// system, permissions): create and remove a probe file there.
pub fn probe_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".sparc3-probe-{}.tmp", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => fail!(Output, "cannot write in directory {}: {e}", dir.display()),
    }
}

/// The directory holding `p` (`.` for a bare file name).
pub fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Write `bytes` to `path` atomically (temp file in the same directory, fsync, rename).
/// Refuses to complete once a signal arrived.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, bytes, true)
}

/// `atomic_write` that completes even after a signal (checkpoints written on the way out).
pub fn atomic_write_on_exit(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, bytes, false)
}

fn write_atomically(path: &Path, bytes: &[u8], check: bool) -> Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.sparc3-{}.tmp", std::process::id()));
    let _guard = interrupt::TempGuard::new(&tmp);
    let res = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        drop(f);
        if check {
            interrupt::check()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.tag(Kind::Output)
}

/// Build a directory atomically: `fill` writes into a temporary directory beside `out`, which
/// is then renamed into place (an existing `out` is replaced only with `force`, after the new
/// one is complete). On any error nothing is left behind.
pub fn atomic_dir(out: &Path, force: bool, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if out.exists() && !force {
        fail!(
            Output,
            "{} already exists; refusing to replace it",
            out.display()
        );
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let tmp = parent_dir(out).join(format!(".{name}.sparc3-{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let _guard = interrupt::TempGuard::new(&tmp);
    let res = (|| -> Result<()> {
        std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        fill(&tmp)?;
        interrupt::check()?;
        if out.exists() {
            let old = parent_dir(out).join(format!(".{name}.sparc3-{}.old", std::process::id()));
            std::fs::rename(out, &old)
                .with_context(|| format!("moving the old {} aside", out.display()))?;
            std::fs::rename(&tmp, out)
                .with_context(|| format!("renaming into {}", out.display()))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&tmp, out)
                .with_context(|| format!("renaming into {}", out.display()))?;
        }
        if let Ok(d) = std::fs::File::open(parent_dir(out)) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res.tag(Kind::Output)
}

/// Write one file inside a directory being built (fsynced).
pub fn write_in(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", p.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", p.display()))?;
    Ok(())
}
