//! Output: progress bars on stderr, results on stdout (JSON for scripts).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;

/// A job's progress as a bar on stderr (hidden when stderr is not a terminal); notes go to
/// stderr as lines.
#[derive(Default)]
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bar {
    fn with(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            f(b);
        }
    }
}

impl crate::jobs::Progress for Bar {
    fn stage(&self, what: &str, len: u64) {
        let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        let old = self
            .bar
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(pb);
        if let Some(o) = old {
            o.finish_and_clear();
        }
    }

    fn message(&self, what: &str) {
        self.with(|b| b.set_message(what.to_string()));
    }

    fn position(&self, pos: u64, len: Option<u64>) {
        self.with(|b| {
            if let Some(n) = len {
                b.set_length(n);
            }
            b.set_position(pos);
        });
    }

    fn done(&self) {
        self.with(ProgressBar::finish_and_clear);
    }

    fn note(&self, text: &str) {
        self.with(|b| b.suspend(|| eprintln!("{text}")));
        if self.bar.lock().map(|b| b.is_none()).unwrap_or(true) {
            eprintln!("{text}");
        }
    }
}

/// Print one JSON document: indented on a terminal, one line otherwise (for `tail -1` and
/// line-oriented scripts).
pub fn print_json<T: serde::Serialize>(v: &T) {
    let text = if std::io::stdout().is_terminal() {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    };
    outln!("{}", text.expect("reports serialize"));
}

/// Write results to stdout (see `outln!`). A closed pipe exits 141 without a word, like `cat`;
/// any other write failure is one error line and exit 4 (cannot write output).
pub fn write_stdout(args: std::fmt::Arguments, newline: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mut write = || -> std::io::Result<()> {
        out.write_fmt(args)?;
        if newline {
            out.write_all(b"\n")?;
            out.flush()?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: writing results to stdout: {e}");
        std::process::exit(crate::error::Kind::Output.exit_code());
    }
}
