//! Model sources: sharded safetensors, the Hugging Face cache (offline), GGUF files.

use crate::common::{self, INPUT};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use sparc3::source::{load, ModelRequest, Origin};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn load_err(p: &Path) -> anyhow::Error {
    match load(&ModelRequest::cpu(p.to_string_lossy())) {
        Ok(_) => panic!("loading {} should fail", p.display()),
        Err(e) => e,
    }
}

/// A fixed batch of ids below `vocab`: [2, 24].
fn some_ids(vocab: u32) -> Tensor {
    let v: Vec<u32> = (0..48u32).map(|i| (i * 37 + 5) % vocab).collect();
    Tensor::from_vec(v, (2, 24), &Device::Cpu).unwrap()
}

fn logits(l: &sparc3::source::Loaded, ids: &Tensor) -> Vec<f32> {
    l.model
        .forward(ids)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Sharded safetensors

#[test]
fn sharded_checkpoint_matches_unsharded_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_sharded("demo-llama", tmp.path(), 3);
    assert!(!tmp.path().join("model.safetensors").exists());
    let sharded = common::load(tmp.path());
    let single = common::load_shared("demo-llama");
    assert!(
        sharded.origin.sharded(),
        "origin should say sharded: {:?}",
        sharded.origin
    );
    assert!(!single.origin.sharded());
    assert_eq!(sharded.store.shard_of.len(), single.store.names().count());
    assert_eq!(
        sharded.model.parameter_count(),
        single.model.parameter_count()
    );
    let ids = some_ids(single.model.dims.vocab as u32);
    let a = logits(&sharded, &ids);
    let b = logits(&single, &ids);
    assert_eq!(a.len(), b.len());
    let differing = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    println!(
        "sharded vs single: {differing} of {} logits differ in bits",
        a.len()
    );
    assert_eq!(
        differing, 0,
        "sharded logits are not bit-identical to the single-file model"
    );
}

#[test]
fn sharded_checkpoint_with_missing_shard_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = common::write_sharded("demo-llama", tmp.path(), 3);
    std::fs::remove_file(tmp.path().join(&shards[1])).unwrap();
    let e = load_err(tmp.path());
    let msg = format!("{e:#}");
    println!("{msg}");
    assert!(
        msg.contains(&shards[1]),
        "error should name the missing shard {}: {msg}",
        shards[1]
    );
    assert!(
        msg.contains("missing"),
        "error should say the shard is missing: {msg}"
    );
    assert_eq!(
        sparc3::error::exit_code(&e),
        INPUT,
        "a missing shard is bad input (exit 3)"
    );
}

// ---------------------------------------------------------------------------------------------
// Hugging Face cache, offline

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A cache laid out like huggingface_hub's: blobs/<sha256>, snapshots/<commit>/<file> → blob
/// (relative symlinks), refs/main = commit. Returns the snapshot folder.
fn write_cache(cache: &Path, repo_folder: &str) -> PathBuf {
    let src = common::model_dir("tiny-random-llama");
    let repo = cache.join(repo_folder);
    let blobs = repo.join("blobs");
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), COMMIT).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        let bytes = std::fs::read(src.join(f)).unwrap();
        let sha = sparc3::util::sha256_hex(&bytes);
        std::fs::write(blobs.join(&sha), &bytes).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&sha), snap.join(f)).unwrap();
        assert!(snap.join(f).is_file(), "symlink {f} does not resolve");
    }
    snap
}

fn offline_env<'a>(var: &'a str, val: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (var, val),
        ("HF_HUB_OFFLINE", "1"),
        ("HTTPS_PROXY", "http://127.0.0.1:9"),
        ("HTTP_PROXY", "http://127.0.0.1:9"),
    ]
}

fn hub_info(model: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let r = common::run_bin_env(
        &["info", "--model", model, "--json"],
        env,
        Duration::from_secs(60),
    );
    assert_eq!(
        r.code,
        Some(0),
        "sparc3 info --model {model} failed: {}",
        r.stderr
    );
    let v = common::json_of(&r);
    assert_eq!(v["parameters"], 156_480, "{v}");
    assert_eq!(v["model"]["kind"], "hub", "{v}");
    assert_eq!(v["model"]["commit"], COMMIT, "{v}");
    v
}

#[test]
fn hub_cache_via_hf_hub_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    write_cache(&cache, "models--org--tiny");
    let c = cache.to_string_lossy();
    let v = hub_info("org/tiny", &offline_env("HF_HUB_CACHE", &c));
    assert_eq!(v["model"]["id"], "org/tiny@main", "{v}");
    // The same config as the plain directory.
    let dir = common::load_shared("tiny-random-llama");
    assert_eq!(v["config_sha256"], dir.config_sha256.as_str());
}

#[test]
fn hub_cache_via_hf_home() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hfhome");
    write_cache(&home.join("hub"), "models--org--tiny");
    let h = home.to_string_lossy();
    hub_info("org/tiny", &offline_env("HF_HOME", &h));
}

#[test]
fn hub_cache_revision_is_commit_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    write_cache(&cache, "models--org--tiny");
    // No ref names this revision: the commit hash itself selects the snapshot.
    std::fs::remove_file(cache.join("models--org--tiny/refs/main")).unwrap();
    let c = cache.to_string_lossy();
    let v = hub_info(
        &format!("org/tiny@{COMMIT}"),
        &offline_env("HF_HUB_CACHE", &c),
    );
    assert_eq!(v["model"]["id"], format!("org/tiny@{COMMIT}"), "{v}");
}

#[test]
fn hub_cache_offline_missing_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let snap = write_cache(&cache, "models--org--tiny");
    std::fs::remove_file(snap.join("tokenizer.json")).unwrap();
    let c = cache.to_string_lossy();
    let r = common::run_bin_env(
        &["info", "--model", "org/tiny", "--json"],
        &offline_env("HF_HUB_CACHE", &c),
        Duration::from_secs(60),
    );
    println!("{}", r.stderr);
    assert_eq!(
        r.code,
        Some(3),
        "expected exit 3, got {:?}: {}",
        r.code,
        r.stderr
    );
    assert!(r.stdout.is_empty(), "no result on stdout: {}", r.stdout);
    assert!(r.stderr.starts_with("error:"), "{}", r.stderr);
    assert!(
        r.stderr.contains("tokenizer.json"),
        "stderr should name tokenizer.json: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("offline"),
        "stderr should say offline: {}",
        r.stderr
    );
}

#[test]
fn hub_cache_offline_unknown_repo_fails_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    write_cache(&cache, "models--org--tiny");
    let c = cache.to_string_lossy();
    for flag_only in [false, true] {
        // Offline from the environment, then from the --offline flag alone.
        let mut env = offline_env("HF_HUB_CACHE", &c);
        let mut args = vec!["info", "--model", "org/not-cached"];
        if flag_only {
            env.retain(|(k, _)| *k != "HF_HUB_OFFLINE");
            args.push("--offline");
        }
        let r = common::run_bin_env(&args, &env, Duration::from_secs(60));
        println!("{:?} ({:.2?}): {}", args, r.elapsed, r.stderr);
        assert_eq!(
            r.code,
            Some(3),
            "expected exit 3, got {:?}: {}",
            r.code,
            r.stderr
        );
        assert!(r.stdout.is_empty());
        assert!(r.stderr.starts_with("error:"), "{}", r.stderr);
        assert!(
            r.stderr.contains("org/not-cached"),
            "stderr should name the id: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("offline") && r.stderr.contains("cache"),
            "stderr should say offline and cache: {}",
            r.stderr
        );
        assert!(
            r.elapsed < Duration::from_secs(20),
            "offline failure took {:?}",
            r.elapsed
        );
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF

/// llama.cpp's q/k row order: w.reshape(heads, 2, head_dim/2, in).swapaxes(1, 2).reshape(out, in).
fn permute_for_gguf(w: &Tensor, heads: usize) -> Tensor {
    let (out, inp) = w.dims2().unwrap();
    w.reshape((heads, 2, out / heads / 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, inp))
        .unwrap()
}

fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf
        .strip_prefix("model.layers.")
        .unwrap_or_else(|| panic!("unexpected tensor {hf}"));
    let (layer, part) = rest.split_once('.').unwrap();
    let g = match part {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        other => panic!("unexpected tensor part {other}"),
    };
    format!("blk.{layer}.{g}")
}

/// tiny-random-llama as an F32 GGUF (llama.cpp names, permuted q/k, llama.* metadata).
fn write_gguf(path: &Path) {
    let src = common::model_dir("tiny-random-llama");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    let u = |k: &str| cfg[k].as_u64().unwrap_or_else(|| panic!("config {k}")) as u32;
    let f = |k: &str| cfg[k].as_f64().unwrap_or_else(|| panic!("config {k}")) as f32;
    let heads = u("num_attention_heads");
    let kv_heads = u("num_key_value_heads");
    let hidden = u("hidden_size");
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut q: Vec<(String, QTensor)> = Vec::new();
    for n in names {
        let mut t = tensors[n].to_dtype(DType::F32).unwrap();
        if n.ends_with("q_proj.weight") {
            t = permute_for_gguf(&t, heads as usize);
        } else if n.ends_with("k_proj.weight") {
            t = permute_for_gguf(&t, kv_heads as usize);
        }
        q.push((gguf_name(n), QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("tiny-random-llama".into())),
        ("llama.embedding_length", Value::U32(hidden)),
        (
            "llama.feed_forward_length",
            Value::U32(u("intermediate_size")),
        ),
        ("llama.block_count", Value::U32(u("num_hidden_layers"))),
        ("llama.attention.head_count", Value::U32(heads)),
        ("llama.attention.head_count_kv", Value::U32(kv_heads)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(f("rms_norm_eps")),
        ),
        ("llama.rope.freq_base", Value::F32(f("rope_theta"))),
        (
            "llama.context_length",
            Value::U32(u("max_position_embeddings")),
        ),
        ("llama.rope.dimension_count", Value::U32(hidden / heads)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).unwrap();
}

/// A temp dir holding only `model.gguf` and tokenizer.json (so the config comes from metadata).
fn gguf_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.gguf");
    write_gguf(&path);
    std::fs::copy(
        common::model_dir("tiny-random-llama").join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    (tmp, path)
}

#[test]
fn gguf_f32_matches_safetensors() {
    let (tmp, path) = gguf_dir();
    assert!(!tmp.path().join("config.json").exists());
    let g = common::load(&path);
    let s = common::load_shared("tiny-random-llama");
    assert!(matches!(g.origin, Origin::Gguf { .. }), "{:?}", g.origin);
    assert_eq!(g.config["model_type"], "llama");
    assert_eq!(
        serde_json::to_value(&g.model.dims).unwrap(),
        serde_json::to_value(&s.model.dims).unwrap(),
        "dims derived from GGUF metadata"
    );
    assert!(!g.model.tied, "output.weight is present, so not tied");
    assert_eq!(g.model.parameter_count(), 156_480);
    let ids = some_ids(s.model.dims.vocab as u32);
    let a = g.model.forward(&ids).unwrap();
    let b = s.model.forward(&ids).unwrap();
    let err = common::max_abs_diff(&a, &b);
    println!("GGUF F32 vs safetensors: max |logit diff| = {err:.3e}");
    assert!(
        err <= 1e-4,
        "GGUF logits differ from safetensors by {err:e}"
    );
}

#[test]
fn gguf_unsupported_quantization_is_reported() {
    let (_tmp, path) = gguf_dir();
    // Patch the type id of one tensor info to 16 (IQ2_XXS). Tensor info layout (GGUF v2):
    // u64 name length, name, u32 n_dims, u64 dims[n], u32 type, u64 offset.
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"output_norm.weight";
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name);
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_slice())
        .expect("tensor info of output_norm.weight");
    let p = at + key.len();
    let n_dims = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
    assert_eq!(n_dims, 1);
    let type_at = p + 4 + 8 * n_dims;
    assert_eq!(
        u32::from_le_bytes(bytes[type_at..type_at + 4].try_into().unwrap()),
        0,
        "F32 type id"
    );
    bytes[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();

    let e = load_err(&path);
    let msg = format!("{e:#}");
    println!("{msg}");
    assert!(msg.contains("unsupported GGUF quantization"), "{msg}");
    assert!(msg.contains("16"), "error should give the type id: {msg}");
    assert!(
        msg.contains("model.gguf"),
        "error should name the file: {msg}"
    );
    assert_eq!(sparc3::error::exit_code(&e), INPUT);

    // The binary prints it as one line, even with RUST_BACKTRACE=1 (candle attaches a backtrace).
    let p = path.to_string_lossy();
    let r = common::run(&["info", "--model", &p]);
    common::assert_error(&r, INPUT, &["unsupported GGUF quantization", &p]);
}

#[test]
fn gguf_truncated_is_reported() {
    let (_tmp, path) = gguf_dir();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let p = path.to_string_lossy();
    let r = common::run(&["info", "--model", &p]);
    common::assert_error(&r, INPUT, &[&p]);
    // Cut inside the header.
    std::fs::write(&path, &bytes[..40]).unwrap();
    let r = common::run(&["info", "--model", &p]);
    common::assert_error(&r, INPUT, &[&p, "GGUF"]);
}

// ---------------------------------------------------------------------------------------------
// SmolLM2-135M Q4_1 GGUF

#[test]
fn smollm2_q4_1_gguf_loads() {
    let l = common::load(&common::smollm2());
    assert_eq!(l.model.parameter_count(), 134_515_008);
    assert_eq!(l.model.dims.layers, 30);
    assert_eq!(l.model.blocks.len(), 30);
    assert!(
        l.model.tied,
        "SmolLM2 has no output.weight: tied embeddings"
    );
    let enc = l
        .tokenizer
        .encode("The capital of France is", false)
        .unwrap();
    let ids = Tensor::new(enc.get_ids(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let out = l.model.forward(&ids).unwrap();
    assert_eq!(out.dims(), &[1, enc.get_ids().len(), 49152]);
    let v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite()), "non-finite logits");
    let spread = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
        - v.iter().fold(f32::INFINITY, |m, &x| m.min(x));
    assert!(spread > 1.0, "logits are degenerate (spread {spread})");
}

#[test]
fn smollm2_config_from_gguf_metadata_matches_config_json() {
    // The GGUF alone (a symlink) with its tokenizer: the config is derived from the metadata.
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("smollm2.gguf");
    std::os::unix::fs::symlink(common::smollm2(), &link).unwrap();
    std::fs::copy(
        common::model_dir("smollm2-135m").join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    let meta = common::load(&link);
    let beside = common::load(&common::smollm2());
    assert_eq!(
        serde_json::to_value(&meta.model.dims).unwrap(),
        serde_json::to_value(&beside.model.dims).unwrap()
    );
    assert_eq!(meta.model.tied, beside.model.tied);
    assert_eq!(meta.model.parameter_count(), 134_515_008);
    let ids = Tensor::new(&[[1u32, 504, 3458, 282, 4649, 314]], &Device::Cpu).unwrap();
    let err = common::max_abs_diff(
        &meta.model.forward(&ids).unwrap(),
        &beside.model.forward(&ids).unwrap(),
    );
    println!("SmolLM2 metadata config vs config.json: max |logit diff| = {err:.3e}");
    assert!(err <= 1e-3, "{err}");
}
