//! Faults: a killed attribution resumed from its checkpoint equals an uninterrupted run
//! exactly; SIGTERM/SIGINT stop a run with exit code 130, leave no output and no temporary
//! files (a checkpoint where one was asked for); the memory guard.

use crate::common::{self, bin, BROKEN_PIPE, INPUT, INTERRUPTED, RESOURCE};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sparc3")
}

fn wait_for(p: &Path, child: &mut Child, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if p.exists() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn finish(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run a job with `--checkpoint-every EVERY --resume` until it completes: in round i, kill it
/// with -9 as soon as the checkpoint `waits[i]` appears (a kill per entry, unless the run ends
/// first), checking that a killed run leaves no `out`. Returns the kills and the last stderr.
fn kill_and_resume(
    run: impl Fn(&[&str]) -> Child,
    out: &Path,
    every: &str,
    waits: &[&Path],
    limit: Duration,
) -> (usize, String) {
    let mut kills = 0;
    for round in 0..=waits.len() {
        let mut child = run(&["--checkpoint-every", every, "--resume"]);
        if waits
            .get(round)
            .is_some_and(|c| wait_for(c, &mut child, limit))
        {
            std::thread::sleep(Duration::from_millis(30 * round as u64 + 10));
            signal(&child, "-KILL");
            let _ = finish(child);
            kills += 1;
            assert!(!out.exists(), "no output from a killed run");
            continue;
        }
        let (code, err) = finish(child);
        assert_eq!(code, Some(0), "{err}");
        return (kills, err);
    }
    unreachable!("the last round always finishes")
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp") || n.contains(".old"))
        .collect()
}

const ATTR: [&str; 7] = [
    "attribute",
    "--samples",
    "160",
    "--seq-len",
    "128",
    "--target",
    "next-token",
];

fn attribute(out: &Path, extra: &[&str]) -> Child {
    let o = out.to_string_lossy().into_owned();
    let mut args: Vec<&str> = ATTR.to_vec();
    args.extend(["--out", &o]);
    args.extend(extra);
    spawn(&args)
}

/// `attribute` with 10× the samples: a run that is surely still going after a fixed wait.
fn long_attribute(out: &Path, extra: &[&str]) -> Child {
    let o = out.to_string_lossy().into_owned();
    let mut args: Vec<&str> = ATTR.to_vec();
    args[2] = "1600";
    args.extend(["--out", &o]);
    args.extend(extra);
    spawn(&args)
}

#[test]
fn killed_and_resumed_attribution_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole.safetensors");
    let (code, err) = finish(attribute(&whole, &[]));
    assert_eq!(code, Some(0), "{err}");
    let resumed = tmp.path().join("resumed.safetensors");
    let ckpt = tmp.path().join("resumed.safetensors.ckpt");
    // Kill -9 at several points: each time resume, until the run completes.
    let (kills, err) = kill_and_resume(
        |extra| attribute(&resumed, extra),
        &resumed,
        "9",
        &[&ckpt, &ckpt, &ckpt],
        Duration::from_secs(60),
    );
    assert!(kills > 0, "the run was killed at least once");
    assert!(err.contains("resumed after"), "resumed: {err}");
    assert!(!ckpt.exists(), "the checkpoint is removed after success");
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&resumed).unwrap(),
        "resumed output equals the uninterrupted one byte for byte"
    );
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
}

#[test]
fn sigterm_stops_with_130_a_checkpoint_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r.safetensors");
    let ckpt = tmp.path().join("r.safetensors.ckpt");
    let mut child = long_attribute(&out, &["--checkpoint-every", "1000"]);
    // Wait until the run is attributing (progress appears only on a terminal: wait a bit).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    signal(&child, "-TERM");
    let (code, err) = finish(child);
    assert_eq!(code, Some(INTERRUPTED), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("error: interrupted"), "{err}");
    assert!(last.contains("--resume"), "{err}");
    assert!(!out.exists());
    assert!(ckpt.exists(), "checkpoint written on the way out");
    assert!(leftovers(tmp.path()).is_empty());
    // Resuming a different run is refused.
    let o = out.to_string_lossy().into_owned();
    let r = common::run(&[
        "attribute",
        "--samples",
        "160",
        "--seq-len",
        "64",
        "--out",
        &o,
        "--resume",
    ]);
    common::assert_error(&r, INPUT, &["checkpoint", "different run"]);
    // The same run resumes and finishes.
    let (code, err) = finish(long_attribute(&out, &["--resume"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.exists() && !ckpt.exists());
}

#[test]
fn sigint_during_compress_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pruned");
    let o = out.to_string_lossy().into_owned();
    let child = spawn(&["compress", "--samples", "1024", "--out", &o]);
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, "-INT");
    let (code, err) = finish(child);
    assert_eq!(code, Some(INTERRUPTED), "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("error: interrupted"),
        "{err}"
    );
    assert!(!out.exists());
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
}

#[test]
fn memory_guard_names_the_need_and_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp
        .path()
        .join("r.safetensors")
        .to_string_lossy()
        .into_owned();
    // OPT's learned positions cap demo-opt's sequence; a huge vocabulary × seq_len is not
    // needed: the estimate for SmolLM2 at 8192 tokens in store mode exceeds any test machine.
    let m = common::smollm2();
    let data = common::data("wikitext-2-raw/wiki.test.joined.txt");
    let r = common::run(&[
        "attribute",
        "--model",
        &m.to_string_lossy(),
        "--data",
        &data.to_string_lossy(),
        "--samples",
        "1",
        "--seq-len",
        "8192",
        "--memory",
        "store",
        "--out",
        &o,
    ]);
    common::assert_error(&r, RESOURCE, &["GiB", "--memory recompute", "--force"]);
    assert!(!Path::new(&o).exists());
}

/// `compress` attributes too: killed mid-attribution and resumed, it writes the same model.
#[test]
fn killed_and_resumed_compress_writes_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |out: &Path, extra: &[&str]| -> Child {
        let o = out.to_string_lossy().into_owned();
        let mut args = vec![
            "compress",
            "--samples",
            "96",
            "--seq-len",
            "128",
            "--save-mask",
            "--out",
            &o,
        ];
        args.extend(extra);
        spawn(&args)
    };
    let whole = tmp.path().join("whole");
    let (code, err) = finish(run(&whole, &[]));
    assert_eq!(code, Some(0), "{err}");
    let resumed = tmp.path().join("resumed");
    let ckpt = tmp.path().join("resumed.ckpt");
    let (kills, _) = kill_and_resume(
        |extra| run(&resumed, extra),
        &resumed,
        "7",
        &[&ckpt, &ckpt],
        Duration::from_secs(60),
    );
    assert!(kills > 0);
    assert!(!ckpt.exists());
    for f in ["model.safetensors", "mask.safetensors"] {
        assert_eq!(
            std::fs::read(whole.join(f)).unwrap(),
            std::fs::read(resumed.join(f)).unwrap(),
            "{f}"
        );
    }
}

/// The jobs that attribute on the way checkpoint each attribution: a correction killed during
/// its attribution and resumed writes the same masks and metrics as an uninterrupted run.
#[test]
fn killed_and_resumed_correction_gives_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let set = common::toxic_subset(tmp.path(), 240);
    let s = set.to_string_lossy().into_owned();
    let run = |out: &Path, extra: &[&str]| -> Child {
        let o = out.to_string_lossy().into_owned();
        let mut args = vec![
            "correct",
            "--toxic-set",
            &s,
            "--count",
            "10",
            "--eval-prompts",
            "8",
            "--k",
            "2",
            "--new-tokens",
            "8",
            "--general-samples",
            "48",
            "--seq-len",
            "128",
            "--eval-windows",
            "2",
            "--out",
            &o,
            "--json",
        ];
        args.extend(extra);
        spawn(&args)
    };
    let whole = tmp.path().join("whole");
    let (code, err) = finish(run(&whole, &[]));
    assert_eq!(code, Some(0), "{err}");
    let resumed = tmp.path().join("resumed");
    let ckpts = [
        tmp.path().join("resumed.lrp-undesired.ckpt"),
        tmp.path().join("resumed.lrp-general.ckpt"),
    ];
    // First round: killed during the undesired set; second: during the general set.
    let (kills, _) = kill_and_resume(
        |extra| run(&resumed, extra),
        &resumed,
        "5",
        &[&ckpts[0], &ckpts[1]],
        Duration::from_secs(120),
    );
    assert_eq!(kills, 2, "both attributions were interrupted");
    for c in &ckpts {
        assert!(!c.exists(), "{} left behind", c.display());
    }
    for f in ["mask.safetensors", "model.safetensors"] {
        assert_eq!(
            std::fs::read(whole.join(f)).unwrap(),
            std::fs::read(resumed.join(f)).unwrap(),
            "{f}"
        );
    }
    let rep = |d: &Path| common::read_json(&d.join("correct-report.json"));
    let (a, b) = (rep(&whole), rep(&resumed));
    assert_eq!(a["sweeps"][0]["points"], b["sweeps"][0]["points"]);
    assert_eq!(a["dense"], b["dense"]);
}

/// `sparc3 info | head -1`: a reader that closes the pipe early ends sparc3 quietly with the
/// shell's broken-pipe status (141), never a panic message.
#[test]
fn closed_stdout_is_a_quiet_broken_pipe_not_a_panic() {
    let model = common::model_dir("tiny-random-llama");
    for args in [
        vec!["info", "--model", model.to_str().unwrap()],
        vec!["info", "--model", model.to_str().unwrap(), "--json"],
    ] {
        let mut child = spawn(&args);
        drop(child.stdout.take()); // the reader is gone before anything is printed
        let (code, stderr) = finish(child);
        assert_eq!(code, Some(BROKEN_PIPE), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}
