//! Logit parity with the transformers goldens (shared/golden/<model>.safetensors) and the
//! parameter counts stated in shared/README.md.

use crate::common;

use candle_core::{DType, Device};

const TOL: f32 = 1e-4;

fn check(name: &str, expected_params: usize) {
    let loaded = common::load_shared(name);
    assert_eq!(
        loaded.model.parameter_count(),
        expected_params,
        "{name}: parameter count"
    );

    let g = candle_core::safetensors::load(common::golden(name), &Device::Cpu).unwrap();
    let ids = g.get("input_ids").expect("golden has input_ids");
    let want = g.get("logits").expect("golden has logits");
    assert_eq!(ids.dtype(), DType::I64);
    assert_eq!(ids.dims(), &[2, 16]);
    let vocab = loaded.model.dims.vocab;
    assert_eq!(want.dims(), &[2, 16, vocab], "{name}: golden logits shape");

    let ids = ids.to_dtype(DType::U32).unwrap();
    let got = loaded.model.forward(&ids).unwrap();
    assert_eq!(got.dtype(), DType::F32);
    let err = common::max_abs_diff(&got, want);
    println!("{name}: max |logit - golden| = {err:.3e} (parameters {expected_params})");
    assert!(
        err <= TOL,
        "{name}: max abs logit error {err:e} exceeds {TOL:e}"
    );
}

#[test]
fn parity_tiny_random_llama() {
    check("tiny-random-llama", 156_480);
}

#[test]
fn parity_tiny_random_opt() {
    check("tiny-random-opt", 149_376);
}

#[test]
fn parity_stories260k() {
    check("stories260k", 260_032);
}

#[test]
fn parity_demo_llama() {
    check("demo-llama", 1_049_728);
}

#[test]
fn parity_demo_opt() {
    check("demo-opt", 1_121_280);
}

/// Cached decoding (prefill + one token at a time) gives the full forward's logits, for RoPE
/// with GQA, OPT's learned positions, and post-norm.
#[test]
fn cached_decoding_matches_the_full_forward() {
    for name in [
        "tiny-random-llama",
        "tiny-random-opt",
        "stories260k",
        "demo-llama",
        "demo-opt",
    ] {
        let loaded = common::load_shared(name);
        let m = &loaded.model;
        let g = candle_core::safetensors::load(common::golden(name), &Device::Cpu).unwrap();
        let ids = g["input_ids"].to_dtype(DType::U32).unwrap(); // [2, 16]
        let full = m.forward(&ids).unwrap();
        let p = 9;
        let (mut logits, mut caches) = m.prefill(&ids.narrow(1, 0, p).unwrap()).unwrap();
        let mut worst = 0f32;
        for pos in p..16 {
            let want = full.narrow(1, pos - 1, 1).unwrap().squeeze(1).unwrap();
            worst = worst.max(common::max_abs_diff(&logits, &want));
            let tok = ids.narrow(1, pos, 1).unwrap().squeeze(1).unwrap();
            logits = m.step(&tok, &mut caches, pos).unwrap();
        }
        let want = full.narrow(1, 15, 1).unwrap().squeeze(1).unwrap();
        worst = worst.max(common::max_abs_diff(&logits, &want));
        println!("{name}: cached decoding max |Δlogit| = {worst:.2e}");
        assert!(worst <= TOL, "{name}: {worst:e}");
    }
}
