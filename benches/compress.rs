//! Compression benchmark on SmolLM2-135M (GGUF): wall time and peak memory of `sparc3 compress`
//! for every method at 50% (each method's reference grouping), calibration 128 C4 windows of 512
//! with seed 0 (the protocol), no evaluation. Each method runs in its own process (the
//! release binary), so the peak RSS is that run's alone. `cargo bench --bench compress`;
//! `SPARC3_BENCH_SAMPLES=16` for a quick look, `SPARC3_BENCH_METHODS=wanda,sparsegpt` to choose.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    sparc3::util::tune_process();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared");
    let model = std::env::var("SPARC3_BENCH_MODEL").unwrap_or_else(|_| {
        shared
            .join("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
            .display()
            .to_string()
    });
    let calib = shared.join("data/c4/c4_en_first1000.jsonl");
    let samples = std::env::var("SPARC3_BENCH_SAMPLES").unwrap_or_else(|_| "128".into());
    let methods = std::env::var("SPARC3_BENCH_METHODS")
        .unwrap_or_else(|_| "magnitude,wanda,sparsegpt,lrp,gradient".into());
    let tmp = tempfile::tempdir()?;
    println!(
        "model {model}; calibration {samples} × 512 tokens of {}; ratio 0.5; {} cores",
        calib.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<10} {:>10} {:>12} {:>14}",
        "method", "wall s", "scoring s", "peak RSS GiB"
    );
    for m in methods.split(',') {
        let out = tmp.path().join(m);
        let t0 = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_sparc3"))
            .args([
                "compress", "--model", &model, "--method", m, "--ratio", "0.5",
            ])
            .args([
                "--calib",
                &calib.display().to_string(),
                "--samples",
                &samples,
            ])
            .args(["--seq-len", "512", "--seed", "0", "--json", "--out"])
            .arg(&out)
            .output()?;
        let wall = t0.elapsed().as_secs_f64();
        if !o.status.success() {
            println!(
                "{m:<10} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            continue;
        }
        let r: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        let gib = r["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / (1u64 << 30) as f64;
        println!(
            "{m:<10} {wall:>10.1} {:>12.1} {gib:>14.2}",
            r["seconds_scores"].as_f64().unwrap_or(f64::NAN)
        );
        let _ = std::fs::remove_dir_all(&out);
    }
    Ok(())
}
