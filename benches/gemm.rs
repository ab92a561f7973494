//! Matrix-kernel benchmark: GFLOP/s of every packed tile this CPU runs, and of candle's matmul
//! (the `gemm` crate), on SmolLM2-135M's product shapes at 512 tokens, plain and with the
//! fused relevance fold. Best of 5 after a warm-up, on the rayon pool.
//! `cargo bench --bench gemm` (`SPARC3_BENCH_THREADS=1` for one core).

use sparc3::kernels::packed::{matmul, matmul_fold, Fold, Isa, View};
use std::time::Instant;

/// (name, m, n, k, A transposed?, B transposed?): the linear layers' `x · Wᵀ`, and the weight
/// relevance `gᵀ · x` (k = tokens) that the fold accumulates.
const SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
    ("q/o   x·Wᵀ 512×576×576", 512, 576, 576, false, true),
    ("up    x·Wᵀ 512×1536×576", 512, 1536, 576, false, true),
    ("down  x·Wᵀ 512×576×1536", 512, 576, 1536, false, true),
    ("head  x·Wᵀ 512×49152×576", 512, 49152, 576, false, true),
    ("fold  gᵀ·x 1536×576×512", 1536, 576, 512, true, false),
];

fn best(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn view(v: &[f32], rows: usize, cols: usize, transposed: bool) -> View {
    // A transposed view of a [cols, rows] row-major matrix, or a row-major [rows, cols] one.
    let (rs, cs) = if transposed { (1, rows) } else { (cols, 1) };
    View {
        ptr: v.as_ptr(),
        rs,
        cs,
    }
}

fn tile<I: Isa>(name: &str) {
    println!("{name} tile ({}×{}):", I::MR, I::NR);
    for &(what, m, n, k, ta, tb) in SHAPES {
        let (a, b) = (data(m * k, 1), data(k * n, 2));
        let (va, vb) = (view(&a, m, k, ta), view(&b, k, n, tb));
        let mut c = vec![0f32; m * n];
        let w = data(m * n, 3);
        let fold = what.starts_with("fold");
        // SAFETY: the tile was checked available; the views and buffers have these sizes.
        let s = best(|| unsafe {
            if fold {
                matmul_fold::<I>(m, n, k, va, vb, w.as_ptr(), c.as_mut_ptr(), Fold::Abs)
            } else {
                matmul::<I>(m, n, k, va, vb, c.as_mut_ptr())
            }
        });
        println!(
            "  {what:<28} {:7.1} GFLOP/s",
            2.0 * (m * n * k) as f64 / s / 1e9
        );
    }
}

fn candle() -> anyhow::Result<()> {
    use candle_core::{Device, Tensor};
    println!("candle matmul (gemm crate):");
    for &(what, m, n, k, ta, tb) in SHAPES {
        let a = Tensor::from_vec(
            data(m * k, 1),
            if ta { (k, m) } else { (m, k) },
            &Device::Cpu,
        )?;
        let b = Tensor::from_vec(
            data(k * n, 2),
            if tb { (n, k) } else { (k, n) },
            &Device::Cpu,
        )?;
        let a = if ta { a.t()? } else { a };
        let b = if tb { b.t()? } else { b };
        let mut r = Ok(());
        let s = best(|| r = a.matmul(&b).map(drop));
        r?;
        let note = if what.starts_with("fold") {
            " (product only, no fold)"
        } else {
            ""
        };
        println!(
            "  {what:<28} {:7.1} GFLOP/s{note}",
            2.0 * (m * n * k) as f64 / s / 1e9
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    sparc3::util::tune_process();
    if let Some(n) = std::env::var("SPARC3_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    println!("{} threads", rayon::current_num_threads());
    rayon::scope(|_| -> anyhow::Result<()> {
        #[cfg(target_arch = "x86_64")]
        {
            use sparc3::kernels::{avx2::Avx2, avx512::Avx512};
            if Avx512::available() {
                tile::<Avx512>("avx512");
            }
            if Avx2::available() {
                tile::<Avx2>("avx2");
            }
        }
        tile::<sparc3::kernels::portable::Portable>("portable");
        candle()
    })
}
