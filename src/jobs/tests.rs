//! The jobs called in process on the built-in model: every report survives a JSON round trip
//! unchanged and carries its provenance.

use super::prepare::{CalibConfig, PplConfig, PruneSetup};
use super::*;
use crate::lrp::Target;
use crate::prune::mask::Pattern;
use crate::prune::method::Method;
use crate::relevance::accum::Aggregation;
use crate::source::{load, Loaded, ModelRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn demo() -> Loaded {
    load(&ModelRequest::cpu("builtin:demo-llama")).unwrap()
}

/// Serialise, read back, serialise again: the same document, with the shared head.
fn round_trip<T: Serialize + DeserializeOwned>(r: &T, command: &str) -> serde_json::Value {
    let a = serde_json::to_value(r).unwrap();
    let back: T = serde_json::from_value(a.clone()).unwrap();
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        a,
        "{command} round trip"
    );
    assert_eq!(a["schema_version"], SCHEMA_VERSION);
    assert_eq!(a["command"], command);
    assert_eq!(a["sparc3_version"], env!("CARGO_PKG_VERSION"));
    assert!(a["seconds"].as_f64().unwrap() > 0.0);
    a
}

fn calib(samples: usize) -> CalibConfig {
    CalibConfig {
        file: None,
        samples,
        seq_len: Some(32),
        seed: 0,
        target: Target::NextTokenLogprob,
        aggregation: Aggregation::TokenSq,
    }
}

fn eval_cfg() -> PplConfig {
    PplConfig {
        file: None,
        windows: Some(2),
        seq_len: Some(64),
    }
}

#[test]
fn eval_and_info_reports_round_trip() {
    let m = demo();
    let cfg = eval::Config {
        seq_len: Some(64),
        max_windows: Some(2),
        ..Default::default()
    };
    let text = eval::read_text(&cfg).unwrap();
    let r = eval::run(&m, &cfg, &text, &Quiet).unwrap();
    let v = round_trip(&r, "eval");
    assert_eq!(v["data"][0]["role"], "text");
    assert_eq!(
        (v["windows"].as_u64(), v["device"].as_str()),
        (Some(2), Some("cpu"))
    );
    let v = round_trip(&info::run(&m), "info");
    assert_eq!(v["model"]["kind"], "builtin");
}

/// Unstructured, every layer, two calibration samples, the demo's evaluation.
fn setup() -> PruneSetup {
    PruneSetup {
        scope: None,
        pattern: Pattern::Unstructured,
        calib: calib(2),
        scores: None,
        layers: LayerFilter::default(),
        eval: eval_cfg(),
        force_memory: false,
    }
}

#[test]
fn compress_and_sweep_reports_round_trip() {
    let m = demo();
    let cfg = compress::Config {
        method: Method::Lrp,
        ratio: 0.5,
        prune: setup(),
        update: compress::Update::None,
        resume: Resume::default(),
        out: None,
        save_mask: true,
    };
    let o = compress::run(&mut demo(), &cfg, &Quiet).unwrap();
    let v = round_trip(&o.report, "compress");
    assert_eq!(v["ratio_achieved_in_pruned_layers"], 0.5);
    let names: Vec<&str> = o.files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(names, [compress::REPORT_FILE, "mask.safetensors"]);
    let cfg = sweep::Config {
        ratios: vec![0.6, 0.3, 0.6],
        methods: vec![Method::Magnitude, Method::Lrp],
        prune: setup(),
    };
    let o = sweep::run(&m, &cfg, &Quiet).unwrap();
    let v = round_trip(&o.report, "sweep");
    assert_eq!(v["series"][0]["points"].as_array().unwrap().len(), 2);
    assert_eq!(v["series"][1]["method"], "lrp");
}

#[test]
fn attribute_shards_merge_and_both_reports_round_trip() {
    let m = demo();
    let dir = tempfile::tempdir().unwrap();
    let mut parts = Vec::new();
    for i in 0..2 {
        let cfg = attribute::Config {
            data: None,
            samples: 4,
            seq_len: Some(32),
            seed: 0,
            target: Target::NextToken,
            rule: crate::relevance::rules::Rule::Lrp { epsilon: None },
            aggregation: Aggregation::Abs,
            memory: None,
            shard: Some((i, 2)),
            resume: Resume::default(),
            out: None,
            force_memory: false,
            passes: None,
            granularity: crate::prune::structured::Granularity::Weight,
        };
        let o = attribute::run(&m, &cfg, &Quiet).unwrap();
        let v = round_trip(&o.report, "attribute");
        assert_eq!(v["samples_range"], serde_json::json!([2 * i, 2 * i + 2]));
        let p = dir.path().join(format!("part{i}.safetensors"));
        o.file.write(&p).unwrap();
        parts.push(p);
    }
    let o = merge::run(&parts, None).unwrap();
    let v = round_trip(&o.report, "merge");
    assert_eq!(
        (v["meta"]["samples"].as_u64(), v["model"].is_null()),
        (Some(4), true)
    );
}

#[test]
fn correct_report_and_mask_report_round_trip() {
    let m = demo();
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let rtp = std::fs::read_to_string(shared.join("toxicity/rtp_decodingtrust_toxic.jsonl"));
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("toxic.jsonl");
    let lines: Vec<&str> = rtp.as_deref().unwrap().lines().take(12).collect();
    std::fs::write(&set, lines.join("\n")).unwrap();
    let cfg = correct::Config {
        toxic_set: set,
        general_set: None,
        general_samples: 4,
        seq_len: 32,
        samples: None,
        granularity: crate::prune::structured::Granularity::Neuron,
        layers: LayerFilter::default(),
        amount: correct::Amount::Counts(vec![5, 10]),
        holdout: 0.5,
        seed: 0,
        methods: vec![Method::Lrp],
        explain: correct::Explain::Continuation,
        objective: correct::Objective::Logit,
        criteria: vec![crate::prune::ranking::Criterion::Difference],
        ratio_smoothing: crate::prune::ranking::RATIO_SMOOTHING,
        lexicon: None,
        eval_prompts: Some(3),
        k: 2,
        new_tokens: 4,
        temperature: 1.0,
        continuation_tokens: 16,
        eval: eval_cfg(),
        max_ppl_rise: 0.01,
        resume: Resume::default(),
        out: None,
        force_memory: false,
    };
    let inputs = correct::setup::read_inputs(&cfg).unwrap();
    let prep = correct::setup::prepare(&m, &cfg, inputs, &Quiet).unwrap();
    let o = correct::run(&m, &cfg, &prep, &Quiet).unwrap();
    let v = round_trip(&o.report, "correct");
    assert_eq!(v["sweeps"][0]["points"].as_array().unwrap().len(), 2);
    let mask = dir.path().join("mask.safetensors");
    let bytes = &o
        .files
        .iter()
        .find(|f| f.0 == "mask.safetensors")
        .unwrap()
        .1;
    std::fs::write(&mask, bytes).unwrap();
    let r = correct::evaluate_mask(&m, &cfg, &prep, &mask, &Quiet).unwrap();
    round_trip(&r, "correct --mask");
}
