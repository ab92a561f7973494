//! Attribution benchmark on SmolLM2-135M (GGUF): one attribution (forward + relevance pass +
//! weight accumulation for all 210 decoder linears) for one sequence of 128 and of 512 tokens,
//! targets `last`, `next-token` and `next-token-logprob`, both memory modes; median of 3 (`SPARC3_BENCH_REPS`) after a
//! warm-up, and the peak RSS of each configuration. `cargo bench --bench attribution`.
//! Reference (LXT 2.1 on PyTorch 2.6, same 2-core machine, `last`): 1.43 s and 2.55 s; the
//! machines these sessions get vary, so time `scripts/bench_lxt.py` beside it.

use candle_core::Tensor;
use sparc3::lrp::{relevance_pass, MemoryMode, Target};
use sparc3::relevance::accum::{Accumulators, Aggregation};
use sparc3::relevance::rules::{Bwd, Rule};
use std::time::Instant;

fn rss_mib(key: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn reset_peak() {
    // Linux: writing 5 resets the peak RSS (VmHWM) to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() -> anyhow::Result<()> {
    sparc3::util::tune_process();
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/smollm2-135m");
    let model = std::env::var("SPARC3_BENCH_MODEL").unwrap_or(
        root.join("SmolLM2-135M-Instruct.Q4_1.gguf")
            .display()
            .to_string(),
    );
    let loaded = sparc3::source::load(&sparc3::source::ModelRequest::cpu(model.clone()))?;
    println!(
        "model {model}, {} threads, matmul backend {}, vector level {:?}",
        rayon::current_num_threads(),
        sparc3::kernels::gemm::backend(),
        sparc3::kernels::level()
    );
    let text =
        std::fs::read_to_string(root.join("../../data/wikitext-2-raw/wiki.test.joined.txt"))?;
    let ids = sparc3::data::encode_plain(&loaded.tokenizer, &text[..20000])?;
    let mut acc = Accumulators::new(Aggregation::Abs);
    println!(
        "weights + accumulators resident: {:.0} MiB",
        rss_mib("VmRSS:")
    );
    // SPARC3_BENCH_LENGTHS=128 (comma-separated) and SPARC3_BENCH_MODES=store narrow the grid.
    let lengths: Vec<usize> = std::env::var("SPARC3_BENCH_LENGTHS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or(vec![128, 512]);
    // SPARC3_BENCH_REPS: timed runs per configuration (default 3; the machine is noisy).
    let reps: usize = std::env::var("SPARC3_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3);
    let modes_env = std::env::var("SPARC3_BENCH_MODES").unwrap_or_default();
    for mode in [MemoryMode::Recompute, MemoryMode::Store] {
        let name = format!("{mode:?}").to_lowercase();
        if !modes_env.is_empty() && !modes_env.split(',').any(|m| m.trim() == name) {
            continue;
        }
        for &t in &lengths {
            for target in [
                Target::Last { token: None },
                Target::NextToken,
                Target::NextTokenLogprob,
            ] {
                let input = Tensor::from_slice(&ids[..t], (1, t), &loaded.model.device)?;
                let mut run = || -> anyhow::Result<f64> {
                    let s = Instant::now();
                    let mut bwd = Bwd {
                        rule: Rule::Lrp { epsilon: None },
                        acc: &mut acc,
                    };
                    relevance_pass(&loaded.model, &input, &target, mode, &mut bwd)?;
                    Ok(s.elapsed().as_secs_f64())
                };
                run()?;
                reset_peak();
                let mut times = (0..reps)
                    .map(|_| run())
                    .collect::<anyhow::Result<Vec<_>>>()?;
                times.sort_by(f64::total_cmp);
                println!(
                    "{:<9} {:>4} tokens {:<10}: median {:.3} s (min {:.3})  peak RSS {:.0} MiB",
                    format!("{mode:?}"),
                    t,
                    target.name(),
                    times[reps / 2],
                    times[0],
                    rss_mib("VmHWM:")
                );
            }
        }
    }
    Ok(())
}
