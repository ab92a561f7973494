//! SIGINT / SIGTERM / SIGHUP handling. The first signal sets a flag that long loops check
//! between steps, so the run stops at a step boundary, writes a checkpoint where one was
//! asked for, removes its temporary files and exits 130 with one line; a second signal
//! removes the registered temporary files and exits at once. Outputs are only ever renamed
//! into place complete, so no interruption can leave a half-written output.

use crate::fail;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static TEMPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn remove_temps() {
    if let Ok(t) = TEMPS.lock() {
        for p in t.iter() {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Install the handler (once, at start-up).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("\ninterrupt: stopping at the next step (again to abort now)");
        } else {
            remove_temps();
            eprintln!("error: interrupted; no output was written");
            std::process::exit(130);
        }
    });
}

pub fn interrupted() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}

/// Fail with exit code 130 when a signal arrived.
pub fn check() -> Result<()> {
    if interrupted() {
        fail!(
            Interrupted,
            "interrupted by a signal; no output was written"
        );
    }
    Ok(())
}

/// A temporary path removed on an immediate abort (the normal error path removes it itself).
pub struct TempGuard(PathBuf);

impl TempGuard {
    pub fn new(p: &Path) -> Self {
        if let Ok(mut t) = TEMPS.lock() {
            t.push(p.to_path_buf());
        }
        TempGuard(p.to_path_buf())
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Ok(mut t) = TEMPS.lock() {
            t.retain(|p| p != &self.0);
        }
    }
}
