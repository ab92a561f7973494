//! AttnLRP relevance against the LXT 2.1 goldens (`../shared/golden/<model>.safetensors`):
//! every weight (and OPT bias) relevance tensor and the input relevance within
//! 1e-4 · max|reference| of that tensor, for the `last`, `next_token` and `grad` modes, in both
//! memory modes.

use crate::common;

use candle_core::{DType, Device, Tensor};
use sparc3::lrp::{relevance_pass, MemoryMode, Target};
use sparc3::relevance::accum::{Accumulators, Aggregation};
use sparc3::relevance::rules::{Bwd, Rule};
use std::collections::HashMap;

fn load_golden(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(common::golden(name), &Device::Cpu).expect("golden loads")
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `floor`: a scale below which a reference is float noise. The k-projection bias of OPT has
/// exactly zero gradient (softmax ignores a per-query constant), so its reference is ~1e-12.
fn check(name: &str, what: &str, got: &Tensor, want: &Tensor, worst: &mut f32, floor: f32) {
    assert_eq!(got.dims(), want.dims(), "{name} {what}: shape");
    let scale = max_abs(want).max(floor);
    let err = max_abs(&(got - want).unwrap());
    let rel = err / scale;
    *worst = worst.max(rel);
    assert!(
        rel <= 1e-4,
        "{name} {what}: max abs error {err:.3e} is {rel:.3e} of max|ref| {scale:.3e}"
    );
}

fn parity(name: &str, mode: MemoryMode) {
    let loaded = common::load_shared(name);
    let model = &loaded.model;
    let g = load_golden(name);
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    for (gmode, rule, target) in [
        (
            "last",
            Rule::Lrp { epsilon: None },
            Target::Last { token: None },
        ),
        ("next_token", Rule::Lrp { epsilon: None }, Target::NextToken),
        ("grad", Rule::Grad, Target::Last { token: None }),
    ] {
        let mut acc = Accumulators::new(Aggregation::Signed);
        let mut bwd = Bwd {
            rule,
            acc: &mut acc,
        };
        let r = relevance_pass(model, &ids, &target, mode, &mut bwd).unwrap();
        let mut worst = 0f32;
        let floor = 1e-6 * g[&format!("{gmode}.total")].to_vec1::<f32>().unwrap()[0].abs();
        // Start relevance.
        let total: f64 = r.start_per_seq.iter().sum();
        let want_total = g[&format!("{gmode}.total")].to_vec1::<f32>().unwrap()[0] as f64;
        assert!(
            (total - want_total).abs() <= 1e-4 * want_total.abs().max(1.0),
            "{name} {gmode}: start {total} vs {want_total}"
        );
        if let Some(ids) = &r.target_ids {
            let want: Vec<i64> = g[&format!("{gmode}.target_ids")].to_vec1().unwrap();
            assert_eq!(
                ids.iter().map(|&x| x as i64).collect::<Vec<_>>(),
                want,
                "{name} {gmode}: targets"
            );
        }
        let inp = Tensor::new(r.input_relevance.clone(), &Device::Cpu).unwrap();
        check(
            name,
            &format!("{gmode}.input_relevance"),
            &inp,
            &g[&format!("{gmode}.input_relevance")],
            &mut worst,
            floor,
        );
        if let Some(p) = &r.position_relevance {
            let p = Tensor::new(p.clone(), &Device::Cpu).unwrap();
            check(
                name,
                &format!("{gmode}.position_relevance"),
                &p,
                &g[&format!("{gmode}.position_relevance")],
                &mut worst,
                floor,
            );
        }
        let mut n = 0;
        for lin in model.linears() {
            let a = &acc.layers[&lin.name];
            let got =
                Tensor::from_vec(a.weight.clone(), (a.shape[0], a.shape[1]), &Device::Cpu).unwrap();
            let key = format!("{gmode}.{}.weight", lin.name);
            check(name, &key, &got, &g[&key], &mut worst, floor);
            n += 1;
            let bkey = format!("{gmode}.{}.bias", lin.name);
            if let Some(want) = g.get(&bkey) {
                let b = a
                    .bias
                    .as_ref()
                    .unwrap_or_else(|| panic!("{name}: no bias relevance for {}", lin.name));
                let got = Tensor::new(b.as_slice(), &Device::Cpu).unwrap();
                if bkey.ends_with("k_proj.bias") {
                    // Exactly zero in theory (softmax ignores a per-query constant): both sides
                    // must be float noise.
                    assert!(
                        max_abs(&got) < floor && max_abs(want) < floor,
                        "{name} {bkey}: not ~0"
                    );
                } else {
                    check(name, &bkey, &got, want, &mut worst, floor);
                }
                n += 1;
            }
        }
        let expected = g
            .keys()
            .filter(|k| k.starts_with(&format!("{gmode}.model.")))
            .count();
        assert_eq!(
            n, expected,
            "{name} {gmode}: compared {n} of {expected} golden parameter tensors"
        );
        println!("{name} {gmode} {mode:?}: {n} tensors, worst error {worst:.2e} of max|ref|, start {total:.4}");
    }
}

#[test]
fn tiny_random_llama() {
    parity("tiny-random-llama", MemoryMode::Store);
    parity("tiny-random-llama", MemoryMode::Recompute);
}

#[test]
fn tiny_random_opt() {
    parity("tiny-random-opt", MemoryMode::Store);
    parity("tiny-random-opt", MemoryMode::Recompute);
}

#[test]
fn stories260k() {
    parity("stories260k", MemoryMode::Recompute);
}

#[test]
fn demo_llama() {
    parity("demo-llama", MemoryMode::Store);
    parity("demo-llama", MemoryMode::Recompute);
}

#[test]
fn demo_opt() {
    parity("demo-opt", MemoryMode::Recompute);
}
