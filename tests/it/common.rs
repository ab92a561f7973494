//! Helpers shared by every area of the integration tests: the documented exit codes, the shared
//! asset folder, running the real binary with a timeout, sandboxes (temporary folders with a
//! model copy and data files), reading what the binary wrote, and tensor comparisons.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Exit codes (`sparc3 --help`: 2 invalid arguments; 3 bad input; 4 cannot write output;
// 5 insufficient resources; 130 interrupted; 141 stdout closed early).

pub const USAGE: i32 = 2;
pub const INPUT: i32 = 3;
pub const OUTPUT: i32 = 4;
pub const RESOURCE: i32 = 5;
pub const INTERRUPTED: i32 = 130;
pub const BROKEN_PIPE: i32 = 141;

// ---------------------------------------------------------------------------------------------
// Shared assets

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

/// SmolLM2-135M-Instruct, Q4_1 GGUF.
pub fn smollm2() -> PathBuf {
    let p = model_dir("smollm2-135m").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

/// The files the built-in model (`builtin:demo-llama`, the default `--model`) is embedded from.
pub fn builtin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("demo-llama")
}

/// Load a model (folder, GGUF file or `builtin:…`) on the CPU in this process.
pub fn load(model: &Path) -> sparc3::source::Loaded {
    sparc3::source::load(&sparc3::source::ModelRequest::cpu(model.to_string_lossy()))
        .unwrap_or_else(|e| panic!("loading {}: {e:#}", model.display()))
}

/// Load the shared model `name` (`model_dir(name)`).
pub fn load_shared(name: &str) -> sparc3::source::Loaded {
    load(&model_dir(name))
}

/// A path as a command-line argument.
pub fn p(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// Writing inputs

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

/// The first `n` records of the shared toxic RealToxicityPrompts subset, as `dir/toxic.jsonl`.
pub fn toxic_subset(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(data("toxicity/rtp_decodingtrust_toxic.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().take(n).collect();
    write_file(dir, "toxic.jsonl", &(lines.join("\n") + "\n"))
}

/// The first `chars` characters of the demo validation text, as `dir/name`.
pub fn demo_text(dir: &Path, name: &str, chars: usize) -> PathBuf {
    let text = std::fs::read_to_string(data("demo-corpus/valid.txt")).unwrap();
    write_file(dir, name, &text.chars().take(chars).collect::<String>())
}

/// The name of shard `i` of `n` in the Hugging Face layout.
pub fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{n:05}.safetensors", i + 1)
}

/// The shared model `name` split into `n` shards plus an index, config.json and tokenizer.json
/// in `dst`; returns the shard names.
pub fn write_sharded(name: &str, dst: &Path, n: usize) -> Vec<String> {
    let src = model_dir(name);
    std::fs::create_dir_all(dst).unwrap();
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let per = names.len().div_ceil(n);
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(per).enumerate() {
        let part: HashMap<String, Tensor> = chunk
            .iter()
            .map(|t| ((*t).clone(), tensors[*t].clone()))
            .collect();
        candle_core::safetensors::save(&part, dst.join(shard_name(i, n))).unwrap();
        for t in chunk {
            weight_map.insert((*t).clone(), Value::String(shard_name(i, n)));
        }
    }
    assert_eq!(
        names.chunks(per).count(),
        n,
        "expected {n} non-empty shards"
    );
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dst.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    (0..n).map(|i| shard_name(i, n)).collect()
}

/// Rewrite a model's `config.json` through `f`.
pub fn edit_config(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Sandboxes

/// A temporary folder for one test (removed when dropped). The areas add their own files
/// (and methods, through a trait of their own) to it.
pub struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    /// An empty sandbox.
    pub fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// A sandbox with a copy of the shared model `name` in `model/`.
    pub fn with_model(name: &str) -> Self {
        let sb = Self::new();
        copy_model(name, &sb.model());
        sb
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// `path(rel)` as a command-line argument.
    pub fn s(&self, rel: &str) -> String {
        p(&self.path(rel))
    }

    pub fn model(&self) -> PathBuf {
        self.path("model")
    }

    /// Everything under the sandbox (see [`tree`]).
    pub fn tree(&self) -> Vec<(String, Option<Vec<u8>>)> {
        tree(self.tmp.path())
    }
}

// ---------------------------------------------------------------------------------------------
// Running the binary

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
pub fn run_bin_env<S: AsRef<str>>(args: &[S], envs: &[(&str, &str)], timeout: Duration) -> Run {
    run_bin_env_in(None, args, envs, timeout)
}

/// `run_bin_env` in the working directory `dir` (default: the test's own).
pub fn run_bin_env_in<S: AsRef<str>>(
    dir: Option<&Path>,
    args: &[S],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> Run {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut cmd = Command::new(bin());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.args(&args)
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

/// `run_bin_env` offline (HF_HUB_OFFLINE=1, no usable proxy) within `timeout`, and with
/// `RUST_BACKTRACE=1` so that an error carrying a captured backtrace shows up as extra lines.
pub fn run_within<S: AsRef<str>>(args: &[S], timeout: Duration) -> Run {
    run_bin_env(
        args,
        &[
            ("HF_HUB_OFFLINE", "1"),
            ("HTTPS_PROXY", "http://127.0.0.1:9"),
            ("RUST_BACKTRACE", "1"),
        ],
        timeout,
    )
}

/// `sparc3 ARGS` offline with a 120 s limit.
pub fn run<S: AsRef<str>>(args: &[S]) -> Run {
    run_within(args, Duration::from_secs(120))
}

fn assert_ok<S: AsRef<str>>(args: &[S], r: Run) -> Run {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    assert_eq!(
        r.code,
        Some(0),
        "sparc3 {args:?} failed ({:?}): {}",
        r.code,
        r.stderr
    );
    r
}

/// `run`, which must succeed.
pub fn run_ok<S: AsRef<str>>(args: &[S]) -> Run {
    assert_ok(args, run(args))
}

/// `run_ok` for the long jobs (real models, whole sweeps): a 900 s limit.
pub fn run_long<S: AsRef<str>>(args: &[S]) -> Run {
    assert_ok(args, run_within(args, Duration::from_secs(900)))
}

/// `run_long`, printing `--json`: the parsed report.
pub fn run_json<S: AsRef<str>>(args: &[S]) -> Value {
    json_of(&run_long(args))
}

/// The whole of stdout as one JSON document (`--json`; never matched line by line, so the
/// layout — pretty or one line — does not matter).
pub fn json_of(r: &Run) -> Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("--json stdout is not one JSON document ({e}): {}", r.stdout))
}

/// `CMD [--model M] EXTRA... --out OUT`, as strings.
pub fn command_args(cmd: &str, model: Option<&Path>, extra: &[&str], out: &Path) -> Vec<String> {
    let mut v = vec![cmd.to_string()];
    if let Some(m) = model {
        v.push("--model".into());
        v.push(p(m));
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v.push("--out".into());
    v.push(p(out));
    v
}

// ---------------------------------------------------------------------------------------------
// Failures

/// The part of the failure contract every failure shares: nothing on stdout, exactly one line
/// on stderr, starting with `error: ` and naming every needle. Returns the line.
pub fn error_line<'a>(what: &str, r: &'a Run, needles: &[&str]) -> &'a str {
    assert!(
        r.stdout.is_empty(),
        "{what}: stdout should be empty on failure, got: {}",
        r.stdout
    );
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr should be exactly one line, got: {:?}",
        r.stderr
    );
    let line = lines[0];
    assert!(line.starts_with("error: "), "{what}: stderr: {line:?}");
    for n in needles {
        assert!(
            line.contains(n),
            "{what}: stderr should mention {n:?}: {line}"
        );
    }
    line
}

/// Assert a clean failure: `code`, nothing on stdout, one `error:` line containing every needle.
pub fn assert_error(r: &Run, code: i32, needles: &[&str]) {
    println!("exit {:?}: {}", r.code, r.stderr.trim_end());
    assert_ne!(r.code, Some(0), "should fail; stdout: {}", r.stdout);
    assert_ne!(r.code, Some(101), "panicked: {}", r.stderr);
    assert_eq!(r.code, Some(code), "exit code; stderr: {}", r.stderr);
    let line = error_line("sparc3", r, needles);
    assert!(
        r.stderr.ends_with('\n'),
        "stderr line should end with a newline: {:?}",
        r.stderr
    );
    assert!(line.len() > "error: ".len() + 5, "stderr: {line:?}");
}

// ---------------------------------------------------------------------------------------------
// Reading what was written

pub fn read_json(path: &Path) -> Value {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()))
}

/// Every entry of a folder (hidden ones included), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
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

/// SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    sha2::Sha256::digest(&b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
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

/// A report reads back as its typed struct and writes out unchanged (the schema is the struct).
pub fn assert_typed<T: serde::Serialize + serde::de::DeserializeOwned>(v: &Value) {
    let typed: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("report does not read as its type ({e}): {v}"));
    assert_eq!(
        &serde_json::to_value(&typed).unwrap(),
        v,
        "report round trip"
    );
}
