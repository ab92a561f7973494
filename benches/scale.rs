//! Scale benchmark: per model shape, load time, one forward, one attribution (`next-token`,
//! per-weight, memory plan chosen automatically) and the peak RSS of that shape's load and
//! attribution (each shape and length in a process of its own), at 512 tokens for every shape
//! and 2048 tokens up to 3B parameters.
//!
//! Checkpoints come from the offline maker, one directory per shape under `SPARC3_SCALE_DIR`
//! (default `/tmp/sparc3-scale`), e.g.
//! `cargo run --release --example make_checkpoint -- --shape tinyllama-1.1b --vocab 49152 --out /tmp/sparc3-scale/tinyllama-1.1b`.
//! Shapes that are missing are skipped. The token ids of each length are written beside them
//! (`ids-T.jsonl`) so that `scripts/bench_lxt_scale.py --ids` explains the same tokens;
//! `scripts/bench-scale.sh` runs both side by side.
//! `SPARC3_SCALE_SHAPES` (comma-separated) and `SPARC3_SCALE_LENGTHS` narrow the grid.

use sparc3::jobs::attribute::{self, Config};
use sparc3::jobs::{Quiet, Resume};
use sparc3::lrp::Target;
use sparc3::prune::structured::Granularity;
use sparc3::relevance::accum::Aggregation;
use sparc3::relevance::rules::Rule;
use std::path::{Path, PathBuf};
use std::time::Instant;

const SHAPES: &[&str] = &[
    "smollm2-360m",
    "qwen2.5-0.5b",
    "tinyllama-1.1b",
    "llama-3.2-1b",
    "llama-3.2-3b",
    "llama-3-8b",
];

fn gib(key: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / (1024.0 * 1024.0))
        .unwrap_or(f64::NAN)
}

fn reset_peak() {
    // Linux: writing 5 resets the peak RSS (VmHWM) to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn env_list(key: &str) -> Option<Vec<String>> {
    std::env::var(key)
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
}

/// The first `t` tokens of WikiText-2's test text, written as one `ids` record.
fn ids_file(dir: &Path, tok: &tokenizers::Tokenizer, t: usize) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/wikitext-2-raw/wiki.test.joined.txt"),
    )?;
    let ids = sparc3::data::encode_plain(tok, &text[..t * 12])?;
    anyhow::ensure!(ids.len() >= t, "not enough text for {t} tokens");
    let path = dir.join(format!("ids-{t}.jsonl"));
    let line = serde_json::json!({ "ids": &ids[..t] }).to_string();
    std::fs::write(&path, line + "\n")?;
    Ok(path)
}

fn config(data: PathBuf, t: usize, out: PathBuf) -> Config {
    Config {
        data: Some(data),
        samples: 1,
        seq_len: Some(t),
        seed: 0,
        target: Target::NextToken,
        rule: Rule::Lrp { epsilon: None },
        aggregation: Aggregation::Abs,
        memory: None,
        shard: None,
        resume: Resume::default(),
        out: Some(out),
        force_memory: false,
        passes: None,
        granularity: Granularity::Weight,
    }
}

/// One shape: load, then per length a forward and an attribution. Rows of the table.
fn shape(name: &str, dir: &Path, lengths: &[usize]) -> anyhow::Result<()> {
    reset_peak();
    let t0 = Instant::now();
    let req = sparc3::source::ModelRequest::cpu(dir.display().to_string());
    let loaded = sparc3::source::load(&req)?;
    let load_s = t0.elapsed().as_secs_f64();
    let params = loaded.model.parameter_count() as f64 / 1e9;
    let loaded_gib = gib("VmRSS:");
    let big = loaded.model.parameter_count() > 3_500_000_000;
    for &t in lengths.iter().filter(|&&t| t <= 512 || !big) {
        reset_peak();
        let data = ids_file(dir.parent().unwrap_or(dir), &loaded.tokenizer, t)?;
        let ids: Vec<u32> =
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&data)?)?["ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_u64().map(|x| x as u32))
                        .collect()
                })
                .unwrap_or_default();
        let x = candle_core::Tensor::from_slice(&ids, (1, t), &loaded.model.device)?;
        let tf = Instant::now();
        drop(loaded.model.forward(&x)?);
        let forward_s = tf.elapsed().as_secs_f64();
        let out = std::env::temp_dir().join(format!("sparc3-scale-{name}-{t}.st"));
        let o = attribute::run(&loaded, &config(data, t, out.clone()), &Quiet)?;
        o.file.write(&out)?;
        let _ = std::fs::remove_file(&out);
        println!(
            "| {name} | {params:.2}B | {} | {t} | {load_s:.1} | {loaded_gib:.2} | {forward_s:.2} | {:.2} | {:.2} | {} |",
            o.report.provenance.dtype.as_deref().unwrap_or("?"),
            o.report.seconds_per_sample,
            gib("VmHWM:"),
            o.report.plan.why
        );
    }
    Ok(())
}

/// One (shape, length) in a child process of its own, so that its peak RSS is its own (memory
/// an earlier run freed may stay with the allocator).
fn one(name: &str, dir: &Path, t: usize) -> anyhow::Result<()> {
    if std::env::var_os("SPARC3_SCALE_CHILD").is_some() {
        if let Err(e) = shape(name, dir, &[t]) {
            println!("| {name} | error: {e:#} |");
        }
        return Ok(());
    }
    let out = std::process::Command::new(std::env::current_exe()?)
        .env("SPARC3_SCALE_CHILD", "1")
        .env("SPARC3_SCALE_SHAPES", name)
        .env("SPARC3_SCALE_LENGTHS", t.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.starts_with(&format!("| {name} ")))
        .for_each(|l| println!("{l}"));
    if !out.status.success() {
        println!("| {name} | {t} | exit {:?} |", out.status.code());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    sparc3::util::tune_process();
    let root = PathBuf::from(
        std::env::var("SPARC3_SCALE_DIR").unwrap_or_else(|_| "/tmp/sparc3-scale".into()),
    );
    let shapes = env_list("SPARC3_SCALE_SHAPES")
        .unwrap_or_else(|| SHAPES.iter().map(|s| s.to_string()).collect());
    let lengths: Vec<usize> = env_list("SPARC3_SCALE_LENGTHS")
        .map(|v| v.iter().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![512, 2048]);
    println!(
        "{} threads, matmul backend {}, vector level {:?}; checkpoints under {}",
        rayon::current_num_threads(),
        sparc3::kernels::gemm::backend(),
        sparc3::kernels::level(),
        root.display()
    );
    println!("| shape | params | dtype | tokens | load s | loaded GiB | forward s | attribution s | peak GiB | plan |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for name in shapes {
        let dir = root.join(&name);
        if !dir.join("config.json").is_file() {
            eprintln!("{name}: no checkpoint at {} (skipped)", dir.display());
            continue;
        }
        for &t in &lengths {
            one(&name, &dir, t)?;
        }
    }
    Ok(())
}
