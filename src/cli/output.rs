//! Output helpers: progress bars on stderr, JSON on stdout.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr (hidden when stderr is not a terminal or `quiet`).
pub fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

pub fn print_json(v: &serde_json::Value) {
    outln!("{}", serde_json::to_string_pretty(v).expect("serializable"));
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
