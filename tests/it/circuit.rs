//! `sparc3 circuit`: IOI generation, the search on a real model (SmolLM2), reproducing a
//! reported circuit from its saved mask, task files, and bad input.

use crate::common::{self, assert_error, data, model_dir, p, run, run_json, INPUT, USAGE};
use std::collections::HashSet;
use std::path::Path;

fn smollm2() -> String {
    p(&common::smollm2())
}

#[test]
fn ioi_prompts_are_one_token_unique_held_out_and_seeded() {
    let tok =
        tokenizers::Tokenizer::from_file(model_dir("smollm2-135m").join("tokenizer.json")).unwrap();
    let set = sparc3::tasks::ioi::generate(None, &tok, 128, 128, 0).unwrap();
    assert_eq!(set.attribution.len(), 128);
    assert_eq!(set.evaluation.len(), 128);
    let attr: HashSet<&str> = set.attribution.iter().map(|p| p.prompt.as_str()).collect();
    assert_eq!(attr.len(), 128, "attribution prompts are unique");
    for p in &set.evaluation {
        assert!(!attr.contains(p.prompt.as_str()), "held out: {}", p.prompt);
    }
    let (mut io_first, mut s_first) = (0, 0);
    for p in set.attribution.iter().chain(&set.evaluation) {
        assert_ne!(p.target_id, p.foil_id);
        for (s, id) in [(&p.target, p.target_id), (&p.foil, p.foil_id)] {
            let enc = tok.encode(s.as_str(), false).unwrap();
            assert_eq!(enc.get_ids(), &[id], "{s:?} is one token");
        }
        let (io, s) = (p.target.trim(), p.foil.trim());
        // The subject is repeated, the indirect object is not.
        assert_eq!(p.prompt.matches(s).count(), 2, "{}", p.prompt);
        assert_eq!(p.prompt.matches(io).count(), 1, "{}", p.prompt);
        if p.prompt.find(io) < p.prompt.find(s) {
            io_first += 1;
        } else {
            s_first += 1;
        }
        assert_eq!(
            p.ids,
            tok.encode(p.prompt.as_str(), true).unwrap().get_ids()
        );
    }
    assert!(io_first > 50 && s_first > 50, "{io_first} / {s_first}");
    let again = sparc3::tasks::ioi::generate(None, &tok, 128, 128, 0).unwrap();
    assert!(again
        .evaluation
        .iter()
        .zip(&set.evaluation)
        .all(|(a, b)| a.prompt == b.prompt));
    let other = sparc3::tasks::ioi::generate(None, &tok, 128, 128, 1).unwrap();
    assert!(other
        .evaluation
        .iter()
        .zip(&set.evaluation)
        .any(|(a, b)| a.prompt != b.prompt));
}

/// Weight-granularity circuits of SmolLM2 for LRP and Wanda: the found fraction holds the
/// threshold, the masks remove exactly what the report says, and re-applying the saved mask
/// to the original model gives the reported held-out metric exactly.
#[test]
fn smollm2_weight_circuit_is_reproduced_from_its_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ioi");
    let m = smollm2();
    let o = out.to_string_lossy().into_owned();
    let common_args = ["--model", &m, "--samples", "16", "--eval-samples", "48"];
    let mut args = vec!["circuit"];
    args.extend(common_args);
    args.extend(["--method", "lrp,wanda", "--out", &o, "--json"]);
    let rep = run_json(&args);
    let dense = rep["dense"]["accuracy"].as_f64().unwrap();
    assert!(dense >= 0.75, "SmolLM2 solves IOI: {dense}");
    assert_eq!(rep["task"]["evaluation_prompts"], 48);
    for f in [
        "circuit-report.json",
        "curve.svg",
        "map-lrp.svg",
        "map-wanda.svg",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let need = rep["threshold_accuracy"].as_f64().unwrap();
    let total: u64 = 30 * (576 * 576 * 2 + 576 * 192 * 2 + 576 * 1536 * 3);
    for meth in rep["methods"].as_array().unwrap() {
        let name = meth["method"].as_str().unwrap();
        let c = &meth["circuit"];
        let kept = c["kept_fraction"].as_f64().unwrap();
        assert!(kept > 0.0 && kept <= 1.0);
        assert!(c["accuracy"].as_f64().unwrap() >= need, "{name}: {c}");
        assert!(
            meth["curve"].as_array().unwrap().len() >= 8,
            "{name}: a curve"
        );
        // Every curve point below the found fraction that holds would contradict the search
        // only if it lies inside the final bracket; the found point itself must be on it.
        assert!(meth["curve"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kept_fraction"] == c["kept_fraction"]));
        // The mask removes exactly the complement of the kept components.
        let mask = std::fs::read(out.join(format!("mask-{name}.safetensors"))).unwrap();
        let st = safetensors::SafeTensors::deserialize(&mask).unwrap();
        let removed: u64 = st
            .tensors()
            .iter()
            .map(|(_, v)| v.data().iter().filter(|&&b| b == 1).count() as u64)
            .sum();
        assert_eq!(st.tensors().len(), 210);
        assert_eq!(
            total - removed,
            c["kept_components"].as_u64().unwrap(),
            "{name}"
        );
        let mp = out.join(format!("mask-{name}.safetensors"));
        let mp = mp.to_string_lossy();
        let mut args = vec!["circuit"];
        args.extend(common_args);
        args.extend(["--mask", &mp, "--json"]);
        let again = run_json(&args);
        assert_eq!(again["dense"], rep["dense"]);
        assert_eq!(again["circuit"]["accuracy"], c["accuracy"], "{name}");
        assert_eq!(again["circuit"]["logit_diff"], c["logit_diff"], "{name}");
    }
    let svg = std::fs::read_to_string(out.join("curve.svg")).unwrap();
    assert!(svg.contains(">lrp<") && svg.contains(">wanda<"));
}

#[test]
fn smollm2_head_and_neuron_circuits() {
    let tmp = tempfile::tempdir().unwrap();
    let m = smollm2();
    for (g, units) in [("head", 270u64), ("neuron", 30 * 1536)] {
        let out = tmp.path().join(g);
        let o = out.to_string_lossy().into_owned();
        let rep = run_json(&[
            "circuit",
            "--model",
            &m,
            "--samples",
            "16",
            "--eval-samples",
            "32",
            "--granularity",
            g,
            "--method",
            "gradient",
            "--out",
            &o,
            "--json",
        ]);
        let meth = &rep["methods"][0];
        let c = &meth["circuit"];
        let kept = c["kept_components"].as_u64().unwrap();
        assert!(kept >= 1 && kept <= units, "{g}: {kept}");
        assert!((c["kept_fraction"].as_f64().unwrap() - kept as f64 / units as f64).abs() < 1e-12);
        assert!(c["accuracy"].as_f64().unwrap() >= rep["threshold_accuracy"].as_f64().unwrap());
        // Head survivors in the report agree with the kept count.
        if g == "head" {
            let alive: u64 = meth["survivors"]["heads"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|b| b["kept"].as_array().unwrap().iter())
                .filter(|k| k.as_f64().unwrap() == 1.0)
                .count() as u64;
            assert_eq!(alive, kept);
        } else {
            let alive: u64 = meth["survivors"]["neurons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["alive"].as_u64().unwrap())
                .sum();
            assert_eq!(alive, kept);
        }
    }
}

/// A task the built-in demo model solves by construction: its own top token against a
/// lower-ranked one, both single tokens. Returns the JSONL text.
fn demo_task(n: usize) -> String {
    let loaded = common::load(Path::new("builtin:demo-llama"));
    let tok = &loaded.tokenizer;
    let text = std::fs::read_to_string(data("demo-corpus/valid.txt")).unwrap();
    let one = |id: u32| -> Option<String> {
        let s = tok.decode(&[id], false).ok()?;
        let enc = tok.encode(s.as_str(), false).ok()?;
        (enc.get_ids() == [id] && !s.trim().is_empty()).then_some(s)
    };
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| l.split_whitespace().count() >= 8) {
        if lines.len() == n {
            break;
        }
        let prompt: String = line
            .split_whitespace()
            .take(6)
            .collect::<Vec<_>>()
            .join(" ");
        let ids = tok
            .encode(prompt.as_str(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        let t = ids.len();
        let input = candle_core::Tensor::from_vec(ids, (1, t), &candle_core::Device::Cpu).unwrap();
        let logits = loaded.model.forward(&input).unwrap();
        let last: Vec<f32> = logits
            .squeeze(0)
            .unwrap()
            .get(t - 1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut order: Vec<u32> = (0..last.len() as u32).collect();
        order.sort_by(|a, b| last[*b as usize].total_cmp(&last[*a as usize]));
        let Some(target) = order.iter().take(5).find_map(|&i| one(i)) else {
            continue;
        };
        let Some(foil) = order[50..].iter().find_map(|&i| one(i)) else {
            continue;
        };
        lines.push(
            serde_json::json!({"prompt": prompt, "target": target, "foil": foil}).to_string(),
        );
    }
    assert!(lines.len() >= n / 2, "enough demo prompts: {}", lines.len());
    lines.join("\n") + "\n"
}

/// The report file is the `--json` document; both reports read back as their types unchanged.
fn typed_reports(out: &std::path::Path, rep: &serde_json::Value, mask_rep: &serde_json::Value) {
    assert_eq!(&common::read_json(&out.join("circuit-report.json")), rep);
    common::assert_typed::<sparc3::jobs::circuit::Report>(rep);
    common::assert_typed::<sparc3::jobs::circuit::MaskReport>(mask_rep);
}

#[test]
fn task_file_on_the_demo_model_with_saved_model() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("task.jsonl");
    std::fs::write(&task, demo_task(48)).unwrap();
    let out = tmp.path().join("c");
    let (t, o) = (task.to_string_lossy(), out.to_string_lossy());
    let rep = run_json(&[
        "circuit",
        "--task",
        &t,
        "--samples",
        "24",
        "--eval-samples",
        "24",
        "--granularity",
        "neuron",
        "--method",
        "lrp,activation",
        "--save-model",
        "--out",
        &o,
        "--json",
    ]);
    assert_eq!(rep["dense"]["accuracy"], 1.0);
    assert_eq!(rep["task"]["name"], "task");
    // The saved model is the original with the circuit's mask applied, and loads back.
    let saved = out.join("model-lrp");
    assert!(saved.join("config.json").is_file() && saved.join("model.safetensors").is_file());
    let r = run(&[
        "eval",
        "--model",
        &saved.to_string_lossy(),
        "--max-windows",
        "2",
        "--seq-len",
        "64",
        "--text",
        &data("demo-corpus/valid.txt").to_string_lossy(),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let mp = out.join("mask-lrp.safetensors");
    let again = run_json(&[
        "circuit",
        "--task",
        &t,
        "--samples",
        "24",
        "--eval-samples",
        "24",
        "--mask",
        &mp.to_string_lossy(),
        "--json",
    ]);
    assert_eq!(
        again["circuit"]["accuracy"],
        rep["methods"][0]["circuit"]["accuracy"]
    );
    typed_reports(&out, &rep, &again);
    // Bit-identical with one thread, and through a checkpointed run.
    let out1 = tmp.path().join("c1");
    let rep1 = run_json(&[
        "circuit",
        "--task",
        &t,
        "--samples",
        "24",
        "--eval-samples",
        "24",
        "--granularity",
        "neuron",
        "--method",
        "lrp,activation",
        "--threads",
        "1",
        "--checkpoint-every",
        "5",
        "--out",
        &out1.to_string_lossy(),
        "--json",
    ]);
    for (a, b) in rep1["methods"]
        .as_array()
        .unwrap()
        .iter()
        .zip(rep["methods"].as_array().unwrap())
    {
        for k in ["circuit", "curve", "survivors"] {
            assert_eq!(a[k], b[k], "{k} of {}", a["method"]);
        }
    }
    for f in ["mask-lrp.safetensors", "mask-activation.safetensors"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(out1.join(f)).unwrap(),
            "{f}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".ckpt"))
        .collect();
    assert!(left.is_empty(), "checkpoints left behind: {left:?}");
}

#[test]
fn bad_task_input_fails_cleanly_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_string_lossy().into_owned();
    let m = model_dir("demo-llama").to_string_lossy().into_owned();
    let case = |task: &Path, code: i32, needles: &[&str]| {
        let r = run(&[
            "circuit",
            "--model",
            &m,
            "--task",
            &task.to_string_lossy(),
            "--out",
            &o,
        ]);
        assert_error(&r, code, needles);
        assert!(!out.exists(), "nothing written");
    };
    let missing = common::write_file(
        tmp.path(),
        "missing.jsonl",
        "{\"prompt\": \"a b\", \"target\": \" the\"}\n",
    );
    case(&missing, INPUT, &["missing.jsonl", "line 1", "foil"]);
    let multi = common::write_file(
        tmp.path(),
        "multi.jsonl",
        "{\"prompt\": \"a b\", \"target\": \" the\", \"foil\": \" of\"}\n{\"prompt\": \"a b\", \"target\": \" extraordinarily unlikely\", \"foil\": \" of\"}\n",
    );
    case(
        &multi,
        INPUT,
        &["multi.jsonl", "line 2", "target", "one token"],
    );
    let empty = common::write_file(tmp.path(), "empty.jsonl", "\n");
    case(&empty, INPUT, &["empty.jsonl", "no records"]);
    let broken = common::write_file(
        tmp.path(),
        "broken.jsonl",
        "{\"prompt\": \"a\", \"target\": \" the\", \"foil\": \" of\"}\n{oops\n",
    );
    case(&broken, INPUT, &["broken.jsonl", "line 2"]);
    let same = common::write_file(
        tmp.path(),
        "same.jsonl",
        "{\"prompt\": \"a b\", \"target\": \" the\", \"foil\": \" the\"}\n",
    );
    case(&same, INPUT, &["same token"]);
    case(tmp.path(), INPUT, &["directory"]);
    for k in ["0", "1.5", "-0.2", "nan"] {
        let r = run(&["circuit", "--keep-metric", k, "--out", &o]);
        assert_error(&r, USAGE, &["--keep-metric"]);
    }
    // The demo model does not solve IOI: say so rather than emit a meaningless circuit.
    let r = run(&[
        "circuit",
        "--samples",
        "8",
        "--eval-samples",
        "32",
        "--out",
        &o,
    ]);
    assert_error(&r, INPUT, &["does not solve the task", "accuracy"]);
    // A tokenizer without one-token names.
    let tiny = model_dir("tiny-random-llama")
        .to_string_lossy()
        .into_owned();
    let r = run(&["circuit", "--model", &tiny, "--out", &o]);
    assert_error(&r, INPUT, &["names are one token"]);
    let bad_cfg = common::write_file(
        tmp.path(),
        "ioi.toml",
        "templates = [\"{A} and {B} went\"]\nnames = [\"Mary\"]\n",
    );
    let r = run(&[
        "circuit",
        "--task-config",
        &bad_cfg.to_string_lossy(),
        "--out",
        &o,
    ]);
    assert_error(&r, INPUT, &["ioi.toml", "{S}"]);
    assert!(!out.exists());
}
