//! The real binary on bad inputs: every failure exits with its documented code (never 0, never a
//! panic's 101), prints exactly one `error:` line on stderr naming the culprit, and nothing on
//! stdout. Inputs are never modified.

use crate::common::{self, assert_error, Run, Sandbox, INPUT, USAGE};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// A sandbox with a copy of tiny-random-llama in `model/` and a short text in `text.txt`.
fn case() -> Sandbox {
    let sb = Sandbox::with_model("tiny-random-llama");
    // The first 4000 characters of the demo validation text: several 64-token windows.
    common::demo_text(sb.root(), "text.txt", 4000);
    sb
}

/// What the cases do with a `case()` sandbox.
trait Case {
    fn file(&self, name: &str) -> PathBuf;
    fn text(&self) -> PathBuf;
    fn eval(&self, extra: &[&str]) -> Run;
    fn info(&self) -> Run;
    fn edit_config(&self, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>));
    fn edit_weights(&self, f: impl FnOnce(&mut HashMap<String, Tensor>));
}

impl Case for Sandbox {
    fn file(&self, name: &str) -> PathBuf {
        self.model().join(name)
    }
    fn text(&self) -> PathBuf {
        self.path("text.txt")
    }
    /// `sparc3 eval --model MODEL --text TEXT --seq-len 64 --max-windows 2 EXTRA...`
    fn eval(&self, extra: &[&str]) -> Run {
        let m = self.model().to_string_lossy().into_owned();
        let t = self.text().to_string_lossy().into_owned();
        let mut args = vec![
            "eval",
            "--model",
            &m,
            "--text",
            &t,
            "--seq-len",
            "64",
            "--max-windows",
            "2",
        ];
        args.extend_from_slice(extra);
        common::run(&args)
    }
    fn info(&self) -> Run {
        let m = self.model().to_string_lossy().into_owned();
        common::run(&["info", "--model", &m])
    }
    fn edit_config(&self, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
        common::edit_config(&self.file("config.json"), f);
    }
    fn edit_weights(&self, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
        let p = self.file("model.safetensors");
        let mut t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
        f(&mut t);
        candle_core::safetensors::save(&t, &p).unwrap();
    }
}

#[test]
fn intact_copy_succeeds() {
    // The baseline every case below damages: it must work.
    let c = case();
    let r = c.eval(&["--json"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v = common::json_of(&r);
    assert_eq!(v["windows"], 2);
    assert!(v["ppl"].as_f64().unwrap().is_finite());
    let r = c.info();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("156480"), "{}", r.stdout);
}

#[test]
fn missing_config_json() {
    let c = case();
    std::fs::remove_file(c.file("config.json")).unwrap();
    assert_error(&c.eval(&[]), INPUT, &["config.json"]);
}

#[test]
fn unreadable_config_json() {
    use std::os::unix::fs::PermissionsExt;
    let c = case();
    let p = c.file("config.json");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&p).is_ok() {
        // Running as root (or with CAP_DAC_OVERRIDE): permissions are not enforced.
        println!("skipped: config.json is still readable after chmod 000 (running as root?)");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        return;
    }
    let r = c.eval(&[]);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_error(&r, INPUT, &["config.json"]);
}

#[test]
fn config_json_invalid_json() {
    let c = case();
    std::fs::write(c.file("config.json"), "{\"model_type\": \"llama\",\n").unwrap();
    assert_error(&c.eval(&[]), INPUT, &["config.json", "JSON"]);
}

#[test]
fn config_json_unsupported_model_type() {
    let c = case();
    c.edit_config(|m| {
        m.insert("model_type".into(), "gpt2".into());
    });
    assert_error(&c.eval(&[]), INPUT, &["gpt2", "llama, opt", "config.json"]);
}

#[test]
fn config_json_bad_hidden_size() {
    for bad in [
        serde_json::json!(0),
        serde_json::json!(-64),
        serde_json::json!("NaN"),
        serde_json::json!(64.5),
    ] {
        let c = case();
        c.edit_config(|m| {
            m.insert("hidden_size".into(), bad.clone());
        });
        assert_error(&c.info(), INPUT, &["hidden_size", "config.json"]);
    }
}

#[test]
fn missing_model_safetensors() {
    let c = case();
    std::fs::remove_file(c.file("model.safetensors")).unwrap();
    assert_error(&c.eval(&[]), INPUT, &["model.safetensors"]);
}

#[test]
fn truncated_model_safetensors() {
    let c = case();
    let p = c.file("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let before = common::snapshot_dir(&c.model());
    assert_error(&c.eval(&[]), INPUT, &["model.safetensors", "truncated"]);
    assert_eq!(
        common::snapshot_dir(&c.model()),
        before,
        "inputs were modified"
    );

    // Cut inside the 8-byte length prefix.
    std::fs::write(&p, &bytes[..5]).unwrap();
    assert_error(&c.info(), INPUT, &["model.safetensors", "truncated"]);
}

#[test]
fn safetensors_absurd_header_length() {
    let c = case();
    let p = c.file("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    assert_error(&c.info(), INPUT, &["model.safetensors", "header"]);
}

#[test]
fn safetensors_shape_disagrees_with_config() {
    let c = case();
    let name = "model.layers.1.mlp.up_proj.weight";
    c.edit_weights(|t| {
        let w = t[name].narrow(0, 0, 100).unwrap();
        t.insert(name.into(), w);
    });
    let before = common::snapshot_dir(&c.model());
    assert_error(
        &c.eval(&[]),
        INPUT,
        &[name, "model.safetensors", "[100, 64]"],
    );
    assert_eq!(
        common::snapshot_dir(&c.model()),
        before,
        "inputs were modified"
    );
}

#[test]
fn weights_contain_nan() {
    let c = case();
    let name = "model.layers.0.self_attn.v_proj.weight";
    c.edit_weights(|t| {
        let mut v = t[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[77] = f32::NAN;
        let w = Tensor::from_vec(v, t[name].shape(), &Device::Cpu).unwrap();
        t.insert(name.into(), w);
    });
    let before = common::snapshot_dir(&c.model());
    assert_error(&c.eval(&[]), INPUT, &[name, "NaN", "model.safetensors"]);
    assert_eq!(
        common::snapshot_dir(&c.model()),
        before,
        "inputs were modified"
    );
}

#[test]
fn missing_tokenizer_json() {
    let c = case();
    std::fs::remove_file(c.file("tokenizer.json")).unwrap();
    assert_error(&c.eval(&[]), INPUT, &["tokenizer.json"]);
}

#[test]
fn unusable_tokenizer_json() {
    let c = case();
    std::fs::write(c.file("tokenizer.json"), "{\"model\": 3}").unwrap();
    assert_error(&c.eval(&[]), INPUT, &["tokenizer.json"]);
}

#[test]
fn tokenizer_flag_is_a_directory() {
    let c = case();
    let d = c.root().to_string_lossy().into_owned();
    assert_error(&c.eval(&["--tokenizer", &d]), INPUT, &[&d, "directory"]);
}

#[test]
fn text_is_a_directory() {
    let c = case();
    let m = c.model().to_string_lossy().into_owned();
    let d = c.root().to_string_lossy().into_owned();
    let r = common::run(&["eval", "--model", &m, "--text", &d, "--seq-len", "64"]);
    assert_error(&r, INPUT, &[&d, "directory"]);
}

#[test]
fn text_is_empty() {
    let c = case();
    std::fs::write(c.text(), "").unwrap();
    assert_error(&c.eval(&[]), INPUT, &["text.txt", "empty"]);
}

#[test]
fn text_is_not_utf8() {
    let c = case();
    std::fs::write(c.text(), b"abc \xff\xfe def").unwrap();
    assert_error(&c.eval(&[]), INPUT, &["text.txt", "UTF-8"]);
}

#[test]
fn text_shorter_than_one_window() {
    let c = case();
    std::fs::write(c.text(), "Once upon a time there was a tiny text.").unwrap();
    assert_error(&c.eval(&[]), INPUT, &["--seq-len 64", "window"]);
}

#[test]
fn text_missing() {
    let c = case();
    std::fs::remove_file(c.text()).unwrap();
    assert_error(&c.eval(&[]), INPUT, &["text.txt"]);
}

#[test]
fn seq_len_beyond_max_positions() {
    let c = case();
    // tiny-random-llama allows 256 positions.
    let m = c.model().to_string_lossy().into_owned();
    let t = c.text().to_string_lossy().into_owned();
    let r = common::run(&["eval", "--model", &m, "--text", &t, "--seq-len", "257"]);
    assert_error(&r, USAGE, &["--seq-len 257", "256"]);
}

#[test]
fn bad_numeric_flags() {
    let c = case();
    let m = c.model().to_string_lossy().into_owned();
    let t = c.text().to_string_lossy().into_owned();
    let r = common::run(&["eval", "--model", &m, "--text", &t, "--seq-len", "1"]);
    assert_error(&r, USAGE, &["--seq-len"]);
    let r = common::run(&[
        "eval",
        "--model",
        &m,
        "--text",
        &t,
        "--seq-len",
        "64",
        "--max-windows",
        "0",
    ]);
    assert_error(&r, USAGE, &["--max-windows"]);
    assert_error(&c.eval(&["--threads", "0"]), USAGE, &["--threads"]);
}

#[test]
fn invalid_dtype() {
    let c = case();
    assert_error(&c.eval(&["--dtype", "f8"]), USAGE, &["--dtype", "f8"]);
}

#[test]
fn invalid_device() {
    let c = case();
    assert_error(&c.eval(&["--device", "tpu"]), USAGE, &["--device", "tpu"]);
}

#[test]
fn model_path_does_not_exist() {
    let c = case();
    let missing = c.root().join("no-such-model");
    let m = missing.to_string_lossy().into_owned();
    let t = c.text().to_string_lossy().into_owned();
    let r = common::run(&["eval", "--model", &m, "--text", &t, "--seq-len", "64"]);
    assert_error(&r, INPUT, &[&m, "hub id"]);
    let r = common::run(&["info", "--model", "not-a-dir-or-hub-id"]);
    assert_error(&r, INPUT, &["not-a-dir-or-hub-id"]);
}

#[test]
fn model_file_that_is_not_gguf() {
    let c = case();
    let p = c.file("config.json").to_string_lossy().into_owned();
    let r = common::run(&["info", "--model", &p]);
    assert_error(&r, INPUT, &[&p, "GGUF"]);
}

#[test]
fn failed_runs_leave_inputs_untouched() {
    // A run that fails late (after loading the model and reading the text) changes nothing.
    let c = case();
    std::fs::write(
        c.text(),
        "A text of a few dozen tokens, far fewer than one window of 256.\n",
    )
    .unwrap();
    let before = common::snapshot_dir(&c.model());
    let text_before = std::fs::read(c.text()).unwrap();
    let m = c.model().to_string_lossy().into_owned();
    let t = c.text().to_string_lossy().into_owned();
    let r = common::run(&["eval", "--model", &m, "--text", &t, "--seq-len", "256"]);
    assert_error(&r, INPUT, &["--seq-len 256", "window"]);
    assert_eq!(common::snapshot_dir(&c.model()), before);
    assert_eq!(std::fs::read(c.text()).unwrap(), text_before);
    assert_eq!(
        common::snapshot_dir(&c.model()),
        common::snapshot_dir(&common::model_dir("tiny-random-llama"))
            .into_iter()
            .filter(
                |(n, _)| ["config.json", "model.safetensors", "tokenizer.json"]
                    .contains(&n.as_str())
            )
            .collect::<Vec<_>>()
    );
}
