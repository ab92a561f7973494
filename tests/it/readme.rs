//! The README's commands, run in order as a newcomer would (so the manual cannot rot): every
//! `sparc3 …` line of its code blocks, with the shared assets' absolute paths and small sample
//! counts, in one scratch directory (later commands read earlier outputs).

use crate::common::{run_bin_env_in, shared};
use std::path::Path;
use std::time::Duration;

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
        let l = line.split(" # ").next().unwrap_or("").trim();
        if !in_sh || l.starts_with('#') || (l.is_empty() && cur.is_empty()) {
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
    let has = |f: &str| args.iter().any(|a| a == f);
    let extra: &[&str] = match args[0].as_str() {
        "circuit" if !has("--mask") => &["--samples", "8", "--eval-samples", "8"],
        "circuit" => &["--eval-samples", "8"],
        "compress" | "sweep" if has("--calib") => &["--seq-len", "64", "--eval-seq-len", "64"],
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
    let shared = format!("{}/", shared().display());
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
        let env = [("HF_HUB_OFFLINE", "1")];
        let r = run_bin_env_in(Some(dir.path()), &args, &env, Duration::from_secs(900));
        println!(
            "sparc3 {} ({:.1} s)",
            args.join(" "),
            r.elapsed.as_secs_f64()
        );
        assert_eq!(
            r.code,
            Some(0),
            "README command failed: sparc3 {}\n{}",
            args.join(" "),
            r.stderr
        );
    }
}
