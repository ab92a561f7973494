//! Forward-pass benchmark on SmolLM2-135M (GGUF): one sequence of 128 and of 512 tokens,
//! median of 5 after a warm-up, and peak RSS. `cargo bench --bench forward`.
//! Reference (PyTorch 2.6 eager, same 2-core machine): 0.195 s and 0.770 s.

use candle_core::Tensor;
use std::time::Instant;

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    sparc3::util::tune_process();
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/smollm2-135m");
    let gguf = root.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = std::env::var("SPARC3_BENCH_MODEL").unwrap_or(gguf.display().to_string());
    let t0 = Instant::now();
    let loaded = sparc3::source::load(&sparc3::source::ModelRequest::cpu(model.clone()))?;
    println!(
        "model {model}: loaded in {:.2} s, {} threads, matmul backend {}, vector level {:?}",
        t0.elapsed().as_secs_f64(),
        rayon::current_num_threads(),
        sparc3::kernels::gemm::backend(),
        sparc3::kernels::level()
    );
    let text =
        std::fs::read_to_string(root.join("../../data/wikitext-2-raw/wiki.test.joined.txt"))?;
    let ids = sparc3::data::encode_plain(&loaded.tokenizer, &text[..20000])?;
    for &t in &[128usize, 512] {
        let input = Tensor::from_slice(&ids[..t], (1, t), &loaded.model.device)?;
        loaded.model.forward(&input)?; // warm-up
        let mut times = Vec::new();
        for _ in 0..5 {
            let s = Instant::now();
            let l = loaded.model.forward(&input)?;
            let _ = l.flatten_all()?.to_vec1::<f32>()?.len();
            times.push(s.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        println!(
            "forward {t:>4} tokens: median {:.3} s (min {:.3}, max {:.3})",
            times[2], times[0], times[4]
        );
    }
    println!("peak RSS {:.0} MiB", peak_rss_mib());
    Ok(())
}
