//! The command reference (`docs/cli.md`), generated from the flag definitions so it cannot
//! drift from them; a test fails when the checked-in file is stale.

use clap::{Arg, CommandFactory};
use std::fmt::Write;

/// The whole reference as Markdown.
pub fn markdown() -> String {
    let cli = super::Cli::command();
    let mut s = String::new();
    let _ = writeln!(s, "# Command reference\n");
    let _ = writeln!(
        s,
        "Generated from the flag definitions (`src/cli/`); do not edit by hand. Regenerate with\n`SPARC3_UPDATE_DOCS=1 cargo test --release --lib cli::docs`.\n"
    );
    if let Some(about) = cli.get_about() {
        let _ = writeln!(s, "{about}\n");
    }
    let _ = writeln!(s, "{}\n", super::EXIT_CODES);
    for sub in cli.get_subcommands() {
        let _ = writeln!(s, "## `sparc3 {}`\n", sub.get_name());
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            let _ = writeln!(s, "{}\n", one_line(&about.to_string()));
        }
        let _ = writeln!(s, "| flag | value | default | meaning |");
        let _ = writeln!(s, "| --- | --- | --- | --- |");
        for a in sub.get_arguments().filter(|a| !is_builtin(a)) {
            let _ = writeln!(s, "{}", row(a));
        }
        s.push('\n');
    }
    s
}

fn is_builtin(a: &Arg) -> bool {
    matches!(a.get_id().as_str(), "help" | "version")
}

fn one_line(t: &str) -> String {
    t.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn row(a: &Arg) -> String {
    let name = match (a.get_long(), a.get_short()) {
        (Some(l), Some(c)) => format!("`--{l}`, `-{c}`"),
        (Some(l), None) => format!("`--{l}`"),
        _ => format!("`{}`", a.get_id().as_str().to_uppercase()),
    };
    let takes_value = a.get_action().takes_values();
    let possible: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|p| !p.is_hide_set())
        .map(|p| format!("`{}`", p.get_name()))
        .collect();
    let value = if !takes_value {
        String::new()
    } else if !possible.is_empty() {
        possible.join(", ")
    } else {
        let names = a.get_value_names().map(|v| v.join(" ")).unwrap_or_default();
        let names = if names.is_empty() {
            a.get_id().as_str().to_uppercase()
        } else {
            names.to_string()
        };
        format!("`{names}`")
    };
    let default: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|d| format!("`{}`", d.to_string_lossy()))
        .collect();
    let mut help = a
        .get_help()
        .map(|h| one_line(&h.to_string()))
        .unwrap_or_default();
    if a.is_required_set() {
        help = format!("required. {help}");
    }
    if a.get_value_delimiter() == Some(',') && !help.contains("comma") {
        help = format!("{help} (comma-separated list)");
    }
    format!(
        "| {name} | {value} | {} | {} |",
        default.join(", "),
        help.trim()
    )
}

#[cfg(test)]
mod tests {
    /// `docs/cli.md` is what the flag definitions generate (`SPARC3_UPDATE_DOCS=1` rewrites it).
    #[test]
    fn cli_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
        let now = super::markdown();
        if std::env::var_os("SPARC3_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &now).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == now,
            "docs/cli.md is stale: regenerate it with `SPARC3_UPDATE_DOCS=1 cargo test --release --lib cli::docs`"
        );
    }
}
