//! The README's commands, run in order as a newcomer would (so the manual cannot rot): every
//! `sparc3 …` line of its set-up and command sections, with the shared assets' absolute paths
//! and small sample counts, in one scratch directory (later commands read earlier outputs).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The README's commands: shell continuation lines joined, `cargo run --release --` read as
/// `sparc3`, only lines that run sparc3.
fn readme_commands() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let mut cmds = Vec::new();
    let mut in_sh = false;
    let mut cur = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let l = line.split(" # ").next().unwrap_or("").trim();
        if l.starts_with('#') || (l.is_empty() && cur.is_empty()) {
            continue;
        }
        cur.push_str(l.trim_end_matches('\\'));
        cur.push(' ');
        if !l.ends_with('\\') {
            let c = cur.trim().replace("cargo run --release -- ", "sparc3 ");
            if let Some(rest) = c.strip_prefix("sparc3 ") {
                cmds.push(rest.split_whitespace().map(str::to_string).collect());
            }
            cur.clear();
        }
    }
    cmds
}

/// Small sample counts and windows instead of the README's full protocol.
fn shrink(args: &mut Vec<String>, shared: &str) {
    const SMALL: &[(&str, &str)] = &[
        ("--samples", "4"),
        ("--seq-len", "64"),
        ("--eval-seq-len", "64"),
        ("--max-windows", "2"),
        ("--eval-windows", "2"),
        ("--ratios", "0.3,0.6"),
        ("--count", "10,30"),
    ];
    for i in 0..args.len() {
        args[i] = args[i].replace("../shared/", shared);
        if let Some(&(_, v)) = SMALL.iter().find(|(f, _)| args[i] == *f) {
            if i + 1 < args.len() {
                args[i + 1] = v.to_string();
            }
        }
    }
    let extra: &[&str] = match args[0].as_str() {
        "circuit" if !args.iter().any(|a| a == "--mask") => {
            &["--samples", "16", "--eval-samples", "16"]
        }
        "circuit" => &["--eval-samples", "16"],
        "correct" => &[
            "--samples",
            "4",
            "--eval-prompts",
            "4",
            "--k",
            "1",
            "--new-tokens",
            "4",
            "--general-samples",
            "2",
        ],
        _ => &[],
    };
    args.extend(extra.iter().map(|s| s.to_string()));
}

#[test]
fn readme_commands_run_in_order() {
    let shared = format!("{}/", common::shared().display());
    let dir = tempfile::tempdir().unwrap();
    let cmds = readme_commands();
    let names: Vec<&str> = cmds.iter().map(|c| c[0].as_str()).collect();
    for sub in [
        "compress",
        "eval",
        "info",
        "attribute",
        "merge",
        "sweep",
        "circuit",
        "correct",
    ] {
        assert!(
            names.contains(&sub),
            "the README shows no `sparc3 {sub}` example"
        );
    }
    for mut args in cmds {
        shrink(&mut args, &shared);
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_sparc3"))
            .args(&args)
            .current_dir(dir.path())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        println!(
            "sparc3 {} ({:.1} s)",
            args.join(" "),
            t.elapsed().as_secs_f64()
        );
        assert!(
            out.status.success(),
            "README command failed ({:?}): sparc3 {}\n{}",
            out.status.code(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
