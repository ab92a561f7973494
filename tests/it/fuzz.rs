//! Property tests ("fuzzing" on stable Rust) for the parsers sparc3 owns: config.json mapping,
//! GGUF metadata mapping, safetensors headers, JSONL / RealToxicityPrompts / task records,
//! shard specs, relevance-file metadata and mask files. Every input must give Ok or a clean
//! error — never a panic. CI runs a few hundred cases per target; `scripts/fuzz.sh` runs each
//! for a bounded time with many more (`cargo test --release --test it -- --exact
//! fuzz::<target>_never_panic`). Failures proptest finds are saved beside this file, in
//! `tests/it/fuzz.regressions`, and replayed first on every run.

use crate::common;

use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::OnceLock;

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases: n,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

fn tiny() -> &'static sparc3::source::Loaded {
    static L: OnceLock<sparc3::source::Loaded> = OnceLock::new();
    L.get_or_init(|| common::load_shared("tiny-random-llama"))
}

fn tiny_opt() -> &'static sparc3::source::Loaded {
    static L: OnceLock<sparc3::source::Loaded> = OnceLock::new();
    L.get_or_init(|| common::load_shared("tiny-random-opt"))
}

/// Values a config field might hold: sane, zero, negative, huge, fractional, wrong types.
fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..300).prop_map(|v| json!(v)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        (-1e30f64..1e30).prop_map(|v| json!(v)),
        Just(json!(1e-300)),
        Just(json!("NaN")),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!([1, 2])),
        Just(
            json!({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8})
        ),
        Just(json!({"type": "linear", "factor": 0.0})),
        Just(json!({"type": "dynamic"})),
        "[a-z_]{0,12}".prop_map(|s| json!(s)),
    ]
}

const LLAMA_KEYS: &[&str] = &[
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "tie_word_embeddings",
    "head_dim",
    "model_type",
    "hidden_act",
];
const OPT_KEYS: &[&str] = &[
    "hidden_size",
    "ffn_dim",
    "num_attention_heads",
    "num_hidden_layers",
    "vocab_size",
    "max_position_embeddings",
    "word_embed_proj_dim",
    "do_layer_norm_before",
    "activation_function",
    "enable_bias",
    "layer_norm_elementwise_affine",
    "model_type",
];

proptest! {
    #![proptest_config(cases(200))]

    #[test]
    fn config_mapping_never_panic(
        edits in proptest::collection::vec((0usize..64, json_value()), 1..5),
        drop in proptest::option::of(0usize..64),
        opt in any::<bool>(),
    ) {
        let (l, keys) = if opt { (tiny_opt(), OPT_KEYS) } else { (tiny(), LLAMA_KEYS) };
        let mut cfg = l.config.clone();
        let o = cfg.as_object_mut().unwrap();
        for (k, v) in edits {
            o.insert(keys[k % keys.len()].to_string(), v);
        }
        if let Some(k) = drop {
            o.remove(keys[k % keys.len()]);
        }
        let _ = sparc3::model::build(&cfg, &l.store);
    }

    #[test]
    fn gguf_metadata_mapping_never_panic(
        entries in proptest::collection::vec((0usize..16, prop_oneof![
            any::<u32>().prop_map(candle_core::quantized::gguf_file::Value::U32),
            any::<u64>().prop_map(candle_core::quantized::gguf_file::Value::U64),
            any::<i32>().prop_map(candle_core::quantized::gguf_file::Value::I32),
            any::<f32>().prop_map(candle_core::quantized::gguf_file::Value::F32),
            "[a-z0-9]{0,8}".prop_map(candle_core::quantized::gguf_file::Value::String),
            any::<bool>().prop_map(candle_core::quantized::gguf_file::Value::Bool),
        ]), 0..12),
    ) {
        use candle_core::quantized::gguf_file::{Content, Value as G, VersionedMagic};
        const KEYS: [&str; 16] = [
            "general.architecture", "llama.embedding_length", "llama.feed_forward_length",
            "llama.attention.head_count", "llama.attention.head_count_kv", "llama.block_count",
            "llama.context_length", "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base",
            "llama.vocab_size", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id",
            "llama.rope.dimension_count", "llama.rope.scaling.type", "llama.rope.scaling.factor",
            "general.name",
        ];
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("general.architecture".to_string(), G::String("llama".into()));
        for (k, v) in entries {
            metadata.insert(KEYS[k].to_string(), v);
        }
        let c = Content {
            magic: VersionedMagic::GgufV3,
            metadata,
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        };
        let _ = sparc3::source::gguf::config_from_metadata(std::path::Path::new("fuzz.gguf"), &c);
    }

    #[test]
    fn safetensors_weights_never_panic(
        flips in proptest::collection::vec((0usize..4096, any::<u8>()), 1..6),
        cut in proptest::option::of(0usize..700_000),
    ) {
        let src = common::model_dir("tiny-random-llama");
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        let mut w = std::fs::read(src.join("model.safetensors")).unwrap();
        // Mostly the header (where lies about offsets and sizes live), sometimes the data.
        for (i, b) in flips {
            let n = w.len();
            let pos = if i % 2 == 0 { i % 8 + 8 * (i % 3 == 0) as usize } else { (i * 151) % n };
            w[pos] = b;
        }
        if let Some(c) = cut {
            w.truncate(c.min(w.len()));
        }
        std::fs::write(dir.path().join("model.safetensors"), &w).unwrap();
        let _ = sparc3::source::load(&sparc3::source::ModelRequest::cpu(dir.path().to_string_lossy()));
    }

    #[test]
    fn jsonl_and_rtp_records_never_panic(lines in proptest::collection::vec(prop_oneof![
        "\\PC{0,40}",
        Just("{\"prompt\": {\"text\": \"You are\"}, \"continuation\": {\"text\": \" a\"}}".to_string()),
        Just("{\"prompt\": \"a\", \"continuation\": null}".to_string()),
        Just("{\"prompt\": 5}".to_string()),
        Just("{\"text\": \"some words here\"}".to_string()),
        Just("{\"ids\": [1, 2, 3, 99999999999]}".to_string()),
        Just("{\"ids\": [-1]}".to_string()),
        Just("{\"prompt\": \"p\", \"target\": \" the\", \"foil\": \" a\"}".to_string()),
        Just("[1,2]".to_string()),
        Just("{".to_string()),
    ], 0..8), holdout in 0.0f64..1.0) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("set.jsonl");
        std::fs::write(&p, lines.join("\n")).unwrap();
        let _ = sparc3::tasks::undesired::read(&p, holdout, 0);
        let tok = &tiny().tokenizer;
        let _ = sparc3::tasks::task::from_file(&p, tok, 4, 4, 0);
        let _ = sparc3::tasks::calib::sample(Some(&p), sparc3::data::builtin_eval_text, tok, 2, 8, 0);
        let _ = sparc3::data::read_text(&p);
    }

    #[test]
    fn shard_specs_never_panic(s in "\\PC{0,12}", i in any::<u64>(), n in any::<u64>()) {
        let _ = sparc3::cli::values::parse_shard(&s);
        if let Ok((a, b)) = sparc3::cli::values::parse_shard(&format!("{i}/{n}")) {
            prop_assert!(a < b);
        }
    }

    #[test]
    fn relevance_and_mask_files_never_panic(
        meta in prop_oneof![
            "\\PC{0,60}",
            Just("{\"format\": \"sparc3-relevance-1\"}".to_string()),
            Just("{\"format\": \"sparc3-relevance-1\", \"samples\": -3}".to_string()),
        ],
        flips in proptest::collection::vec((0usize..2000, any::<u8>()), 0..4),
        kind in 0usize..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.safetensors");
        let data: Vec<u8> = vec![0; 16];
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
        let name = match kind {
            0 => "model.layers.0.self_attn.q_proj.weight",
            1 => "tokens.ids",
            _ => "x",
        };
        let mut md = std::collections::HashMap::new();
        md.insert("sparc3".to_string(), meta);
        let mut bytes = safetensors::serialize(vec![(name, view)], Some(md)).unwrap();
        for (i, b) in flips {
            let n = bytes.len();
            bytes[i % n] = b;
        }
        std::fs::write(&p, &bytes).unwrap();
        let _ = sparc3::lrp::file::RelevanceFile::read(&p);
        let _ = sparc3::prune::mask::read(&p, &tiny().model);
    }
}
