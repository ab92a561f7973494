//! Helpers shared by the integration tests: the shared asset folder, copies of model folders,
//! running the real binary with a timeout, and tensor comparisons.
#![allow(dead_code)]

use candle_core::Tensor;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The shared, read-only test assets (`../shared` next to the crate).
pub fn shared() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared");
    if !dir.join("models").is_dir() {
        panic!(
            "shared test assets not found at {} (expected a `shared/` folder beside the crate with models/, golden/ and data/; see shared/README.md)",
            dir.display()
        );
    }
    dir
}

pub fn model_dir(name: &str) -> PathBuf {
    let d = shared().join("models").join(name);
    assert!(d.is_dir(), "shared model folder {} is missing", d.display());
    d
}

pub fn golden(name: &str) -> PathBuf {
    let p = shared().join("golden").join(format!("{name}.safetensors"));
    assert!(p.is_file(), "golden file {} is missing", p.display());
    p
}

pub fn data(rel: &str) -> PathBuf {
    let p = shared().join("data").join(rel);
    assert!(p.is_file(), "shared data file {} is missing", p.display());
    p
}

/// Write `text` to `dir/name` and return the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Copy the three files a model needs (config.json, model.safetensors, tokenizer.json).
pub fn copy_model(name: &str, dst: &Path) {
    let src = model_dir(name);
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dst.join(f))
            .unwrap_or_else(|e| panic!("copying {f} of {name}: {e}"));
    }
}

/// Result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sparc3")
}

/// Run `sparc3 ARGS` with the hub variables of the test environment removed, then `envs` set.
/// Panics if it runs past `timeout` (the child is killed first).
pub fn run_bin_env(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Run {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in [
        "HF_HUB_CACHE",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "HUGGINGFACE_HUB_CACHE",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("starting the sparc3 binary");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for sparc3") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sparc3 {args:?} did not finish within {timeout:?} (killed)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    Run {
        code: status.code(),
        stdout,
        stderr,
        elapsed,
    }
}

/// `run_bin_env` offline (HF_HUB_OFFLINE=1, no usable proxy) with a 120 s limit, and with
/// `RUST_BACKTRACE=1` so that an error carrying a captured backtrace shows up as extra lines.
pub fn run_bin(args: &[&str]) -> Run {
    run_bin_env(
        args,
        &[
            ("HF_HUB_OFFLINE", "1"),
            ("HTTPS_PROXY", "http://127.0.0.1:9"),
            ("RUST_BACKTRACE", "1"),
        ],
        Duration::from_secs(120),
    )
}

/// Assert a clean failure: `code`, nothing on stdout, one `error:` line containing every needle.
pub fn assert_error(r: &Run, code: i32, needles: &[&str]) {
    println!("exit {:?}: {}", r.code, r.stderr.trim_end());
    assert_ne!(r.code, Some(0), "should fail; stdout: {}", r.stdout);
    assert_ne!(r.code, Some(101), "panicked: {}", r.stderr);
    assert_eq!(r.code, Some(code), "exit code; stderr: {}", r.stderr);
    assert!(
        r.stdout.is_empty(),
        "stdout should be empty on failure, got: {}",
        r.stdout
    );
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stderr should be exactly one line, got: {:?}",
        r.stderr
    );
    assert!(
        r.stderr.ends_with('\n'),
        "stderr line should end with a newline: {:?}",
        r.stderr
    );
    let line = lines[0];
    assert!(
        line.starts_with("error: ") && line.len() > "error: ".len() + 5,
        "stderr: {line:?}"
    );
    for n in needles {
        assert!(line.contains(n), "stderr should mention {n:?}: {line}");
    }
}

/// Largest absolute difference between two f32 tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut m = 0.0f32;
    for (x, y) in a.iter().zip(&b) {
        let d = (x - y).abs();
        if d.is_nan() {
            return f32::NAN;
        }
        m = m.max(d);
    }
    m
}

/// Everything under `dir`, recursively and sorted: files with their bytes, folders (`name/`) and
/// links by name; for "nothing written, inputs untouched".
pub fn tree(dir: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, Option<Vec<u8>>)>) {
        let mut es: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        es.sort_by_key(|e| e.file_name());
        for e in es {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.push((rel, None));
            } else if ft.is_dir() {
                out.push((rel + "/", None));
                walk(&p, base, out);
            } else {
                out.push((rel, Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v
}

/// Rewrite a model's `config.json` through `f`.
pub fn edit_config(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Content snapshot of every file in a folder (name → bytes), for "inputs untouched".
pub fn snapshot_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}
