//! `sparc3 compress` through the real binary: exact group sparsity for every method, scope and
//! N:M pattern; weights that are not removed stay bit-identical to the input; the written HF
//! directory loads and reproduces the reported perplexity (also sharded and in f16/bf16);
//! relevance files from `attribute` are reused and checked against the model and method;
//! `--layers` limits pruning; runs are deterministic; bad input fails cleanly (documented exit
//! code, one `error:` line, nothing on stdout, nothing written, inputs untouched).

use crate::common::{
    self, assert_error, builtin_dir, command_args, json_of, listing, p, read_json, run, run_ok,
    Sandbox, INPUT, OUTPUT, USAGE,
};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Small calibration for every method that needs one.
const CALIB: &[&str] = &["--samples", "8", "--seq-len", "64"];

fn input_dir(model: Option<&Path>) -> PathBuf {
    model.map_or_else(builtin_dir, Path::to_path_buf)
}

fn wikitext() -> PathBuf {
    common::data("wikitext-2-raw/wiki.test.raw")
}

/// `compress [--model M] EXTRA... --out OUT`.
fn compress_args(model: Option<&Path>, extra: &[&str], out: &Path) -> Vec<String> {
    command_args("compress", model, extra, out)
}

/// Run `compress ... --json` successfully; the printed report must be the one written.
fn compress_ok(model: Option<&Path>, extra: &[&str], out: &Path) -> Value {
    let mut args = compress_args(model, extra, out);
    args.push("--json".into());
    let r = run_ok(&args);
    let printed = json_of(&r);
    let written = read_json(&out.join("sparc3-report.json"));
    assert_eq!(
        printed, written,
        "printed report differs from sparc3-report.json"
    );
    written
}

// ---------------------------------------------------------------------------------------------
// Raw safetensors

#[derive(Clone, Debug, PartialEq)]
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Raw {
    fn f32s(&self) -> Vec<f32> {
        assert_eq!(self.dtype, Dtype::F32, "expected an F32 tensor");
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn u32_bits(&self) -> Vec<u32> {
        assert_eq!(self.dtype, Dtype::F32, "expected an F32 tensor");
        self.data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn cols(&self) -> usize {
        assert_eq!(
            self.shape.len(),
            2,
            "expected a matrix, got {:?}",
            self.shape
        );
        self.shape[1]
    }
}

type Tensors = BTreeMap<String, Raw>;

fn read_st(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: not safetensors: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                Raw {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                },
            )
        })
        .collect()
}

/// Every tensor of a model folder (single file, or shards listed by the index).
fn read_weights(dir: &Path) -> Tensors {
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return read_st(&dir.join("model.safetensors"));
    }
    let map = weight_map(dir);
    let mut all = Tensors::new();
    let files: BTreeSet<&String> = map.values().collect();
    for f in files {
        for (n, t) in read_st(&dir.join(f)) {
            assert_eq!(
                map.get(&n),
                Some(f),
                "{n} is in {f} but the index disagrees"
            );
            assert!(all.insert(n.clone(), t).is_none(), "{n} is in two shards");
        }
    }
    assert_eq!(
        all.len(),
        map.len(),
        "the index lists tensors no shard holds"
    );
    all
}

fn weight_map(dir: &Path) -> BTreeMap<String, String> {
    let idx = read_json(&dir.join("model.safetensors.index.json"));
    idx["weight_map"]
        .as_object()
        .expect("weight_map")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("file name").to_string()))
        .collect()
}

/// `mask.safetensors`: name → (shape, 0/1 per weight), checked to be U8.
fn read_mask(dir: &Path) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    read_st(&dir.join("mask.safetensors"))
        .into_iter()
        .map(|(n, t)| {
            assert_eq!(t.dtype, Dtype::U8, "mask {n} should be U8");
            assert!(
                t.data.iter().all(|&b| b <= 1),
                "mask {n} holds values other than 0 and 1"
            );
            (n, (t.shape, t.data))
        })
        .collect()
}

/// Names of the prunable decoder linear weights (Llama and OPT naming).
fn is_linear(name: &str) -> bool {
    let re = regex::Regex::new(
        r"^(model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)|model\.decoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|fc1|fc2))\.weight$",
    )
    .unwrap();
    re.is_match(name)
}

fn linears(t: &Tensors) -> BTreeSet<String> {
    t.keys().filter(|n| is_linear(n)).cloned().collect()
}

fn removed_count(m: &[u8]) -> usize {
    m.iter().filter(|&&x| x == 1).count()
}

/// Every removed score is at most every kept score (within one group).
fn assert_lowest(what: &str, scores: &[f32], removed: &[u8]) {
    let mut max_removed = f32::NEG_INFINITY;
    let mut min_kept = f32::INFINITY;
    for (s, &m) in scores.iter().zip(removed) {
        if m == 1 {
            max_removed = max_removed.max(*s);
        } else {
            min_kept = min_kept.min(*s);
        }
    }
    assert!(
        max_removed <= min_kept,
        "{what}: a removed weight scores {max_removed:e}, above a kept one ({min_kept:e})"
    );
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// The output is the input with exactly the masked weights zeroed: same tensors, dtypes and
/// shapes; every masked entry is 0; every unmasked entry has the input's bits; tensors that are
/// not pruned (embeddings, norms, biases, lm_head, unselected layers) are byte-identical.
/// `pruned` is the set of weights that must have a mask.
fn assert_only_masked_changed(
    what: &str,
    input: &Tensors,
    output: &Tensors,
    mask: &BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    pruned: &BTreeSet<String>,
) {
    let ki: Vec<&String> = input.keys().collect();
    let ko: Vec<&String> = output.keys().collect();
    assert_eq!(ki, ko, "{what}: tensor names differ from the input");
    let km: BTreeSet<String> = mask.keys().cloned().collect();
    assert_eq!(
        &km, pruned,
        "{what}: the mask covers other layers than expected"
    );
    let mut non_linear = 0;
    for (name, a) in input {
        let b = &output[name];
        assert_eq!(a.dtype, b.dtype, "{what}: dtype of {name}");
        assert_eq!(a.shape, b.shape, "{what}: shape of {name}");
        match mask.get(name) {
            None => {
                assert!(
                    a.data == b.data,
                    "{what}: {name} is not pruned but its bytes changed"
                );
                non_linear += usize::from(!is_linear(name));
            }
            Some((shape, m)) => {
                assert_eq!(shape, &a.shape, "{what}: mask shape of {name}");
                let (ia, ib) = (a.u32_bits(), b.u32_bits());
                assert_eq!(m.len(), ia.len());
                let mut changed = 0;
                for (i, &mi) in m.iter().enumerate() {
                    if mi == 1 {
                        assert_eq!(
                            f32::from_bits(ib[i]),
                            0.0,
                            "{what}: {name}[{i}] is masked but not zero"
                        );
                    } else {
                        assert_eq!(
                            ia[i],
                            ib[i],
                            "{what}: {name}[{i}] is kept but its bits changed ({:e} → {:e})",
                            f32::from_bits(ia[i]),
                            f32::from_bits(ib[i])
                        );
                    }
                    changed += usize::from(ia[i] != ib[i]);
                }
                assert!(
                    changed > 0 || removed_count(m) == 0,
                    "{what}: {name} has removed weights but no value changed"
                );
            }
        }
    }
    assert!(
        non_linear > 0,
        "{what}: expected embeddings/norms besides the linears"
    );
}

/// Compress with `--save-mask`, check the output against the input as above and return the
/// output tensors, the mask and the report.
struct Pruned {
    input: Tensors,
    output: Tensors,
    mask: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    report: Value,
}

fn prune(what: &str, model: Option<&Path>, extra: &[&str], out: &Path) -> Pruned {
    let mut args = extra.to_vec();
    args.push("--save-mask");
    let report = compress_ok(model, &args, out);
    let input = read_weights(&input_dir(model));
    let output = read_weights(out);
    let mask = read_mask(out);
    let pruned: BTreeSet<String> = linears(&input);
    assert!(!pruned.is_empty(), "{what}: no linears found in the input");
    assert_only_masked_changed(what, &input, &output, &mask, &pruned);
    assert_report_matches(what, &report, &output, &mask);
    Pruned {
        input,
        output,
        mask,
        report,
    }
}

/// `ratio_achieved_in_pruned_layers` is the masked share, `sparsity_per_layer` the zero share
/// of each written layer.
fn assert_report_matches(
    what: &str,
    report: &Value,
    output: &Tensors,
    mask: &BTreeMap<String, (Vec<usize>, Vec<u8>)>,
) {
    let (z, n) = mask
        .values()
        .fold((0, 0), |(z, n), (_, m)| (z + removed_count(m), n + m.len()));
    let achieved = report["ratio_achieved_in_pruned_layers"]
        .as_f64()
        .expect("ratio_achieved_in_pruned_layers");
    assert!(
        (achieved - z as f64 / n as f64).abs() < 1e-12,
        "{what}: report says {achieved}, the mask removes {z} of {n}"
    );
    let per = report["sparsity_per_layer"]
        .as_array()
        .expect("sparsity_per_layer");
    let listed: BTreeSet<String> = per
        .iter()
        .map(|e| format!("{}.weight", e["layer"].as_str().expect("layer")))
        .collect();
    assert_eq!(
        listed,
        linears(output),
        "{what}: sparsity_per_layer lists other layers"
    );
    for e in per {
        let name = format!("{}.weight", e["layer"].as_str().unwrap());
        let v = output[&name].f32s();
        let zeros = v.iter().filter(|&&x| x == 0.0).count();
        let s = e["sparsity"].as_f64().expect("sparsity");
        assert!(
            (s - zeros as f64 / v.len() as f64).abs() < 1e-12,
            "{what}: report says {name} has sparsity {s}, the file has {zeros} zeros of {}",
            v.len()
        );
    }
}

/// Every row of every masked weight removes exactly `k(cols)`.
fn assert_per_row(
    what: &str,
    mask: &BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    k: impl Fn(usize) -> usize,
) {
    for (name, (shape, m)) in mask {
        let cols = shape[1];
        for (r, row) in m.chunks(cols).enumerate() {
            assert_eq!(
                removed_count(row),
                k(cols),
                "{what}: row {r} of {name} ({cols} inputs) removes {} weights",
                removed_count(row)
            );
        }
    }
}

fn floor(n: usize, r: f64) -> usize {
    (n as f64 * r).floor() as usize
}

// ---------------------------------------------------------------------------------------------
// 1. Exact group sparsity

#[test]
fn row_scope_removes_exactly_half_of_every_row_for_every_method() {
    let tmp = tempfile::tempdir().unwrap();
    for method in ["magnitude", "wanda", "lrp", "gradient"] {
        let out = tmp.path().join(method);
        let mut extra = vec![
            "--method",
            method,
            "--scope",
            "row",
            "--ratio",
            "0.5",
            "--eval-windows",
            "2",
        ];
        extra.extend_from_slice(CALIB);
        let pr = prune(method, None, &extra, &out);
        assert_eq!(pr.mask.len(), 28, "{method}: demo-llama has 28 linears");
        assert_per_row(method, &pr.mask, |cols| floor(cols, 0.5));
        assert_eq!(pr.report["method"], method);
        assert_eq!(pr.report["scope"], "row");
        assert_eq!(pr.report["pattern"], "unstructured");
        assert_eq!(pr.report["ratio_requested"], 0.5);
        assert_eq!(pr.report["ratio_achieved_in_pruned_layers"], 0.5);
        let cal = &pr.report["calibration"];
        if method == "magnitude" {
            assert!(cal.is_null(), "magnitude needs no calibration: {cal}");
            for (name, (_, m)) in &pr.mask {
                let s = abs(&pr.input[name].f32s());
                let cols = pr.input[name].cols();
                for (r, (sr, mr)) in s.chunks(cols).zip(m.chunks(cols)).enumerate() {
                    assert_lowest(&format!("magnitude {name} row {r}"), sr, mr);
                }
            }
        } else {
            assert_eq!(cal["samples"], 8, "{method}: calibration {cal}");
            assert_eq!(cal["seq_len"], 64, "{method}: calibration {cal}");
            assert_eq!(cal["seed"], 0, "{method}: calibration {cal}");
            assert_eq!(cal["file"], "builtin:demo-valid", "{method}: {cal}");
        }
        let (b, a) = (
            pr.report["ppl_before"].as_f64().expect("ppl_before"),
            pr.report["ppl_after"].as_f64().expect("ppl_after"),
        );
        assert!(
            b.is_finite() && a.is_finite() && a > b,
            "{method}: ppl {b} → {a}"
        );
    }
}

#[test]
fn row_scope_uses_the_floor_for_odd_widths() {
    // tiny-random-llama: inputs of 64 and 172; 0.3 → 19 and 51 per row.
    let tmp = tempfile::tempdir().unwrap();
    let model = common::model_dir("tiny-random-llama");
    for method in ["magnitude", "lrp"] {
        let mut extra = vec!["--method", method, "--scope", "row", "--ratio", "0.3"];
        extra.extend_from_slice(CALIB);
        let pr = prune(method, Some(&model), &extra, &tmp.path().join(method));
        assert_per_row(method, &pr.mask, |cols| floor(cols, 0.3));
        let widths: BTreeSet<usize> = pr.mask.values().map(|(s, _)| s[1]).collect();
        assert_eq!(widths, BTreeSet::from([64, 172]));
    }
}

#[test]
fn layer_scope_removes_exactly_the_floor_of_each_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::model_dir("tiny-random-llama");
    // magnitude's default scope is layer.
    let pr = prune(
        "magnitude",
        Some(&model),
        &["--method", "magnitude", "--ratio", "0.3"],
        &tmp.path().join("mag"),
    );
    assert_eq!(pr.report["scope"], "layer");
    for (name, (_, m)) in &pr.mask {
        assert_eq!(removed_count(m), floor(m.len(), 0.3), "magnitude {name}");
        assert_lowest(
            &format!("magnitude {name}"),
            &abs(&pr.input[name].f32s()),
            m,
        );
    }
    // Rows are not equal under layer scope (otherwise this would not test layer scope).
    let (name, (shape, m)) = pr.mask.iter().next().unwrap();
    let per_row: BTreeSet<usize> = m.chunks(shape[1]).map(removed_count).collect();
    assert!(
        per_row.len() > 1,
        "{name}: every row removes the same count under layer scope"
    );

    let mut extra = vec!["--method", "lrp", "--scope", "layer", "--ratio", "0.3"];
    extra.extend_from_slice(CALIB);
    let pr = prune("lrp layer", Some(&model), &extra, &tmp.path().join("lrp"));
    assert_eq!(pr.report["scope"], "layer");
    for (name, (_, m)) in &pr.mask {
        assert_eq!(removed_count(m), floor(m.len(), 0.3), "lrp {name}");
    }
}

#[test]
fn global_scope_removes_exactly_the_floor_of_all_layers_lowest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::model_dir("tiny-random-llama");
    let scores = tmp.path().join("scores.safetensors");
    let mut a = vec!["attribute".to_string(), "--model".into(), p(&model)];
    a.extend(CALIB.iter().map(|s| s.to_string()));
    a.extend(["--out".to_string(), p(&scores)]);
    run_ok(&a);
    let s = p(&scores);
    let pr = prune(
        "lrp global",
        Some(&model),
        &[
            "--method", "lrp", "--scope", "global", "--ratio", "0.3", "--scores", &s,
        ],
        &tmp.path().join("out"),
    );
    assert_eq!(pr.report["scope"], "global");
    let total: usize = pr.mask.values().map(|(_, m)| m.len()).sum();
    let removed: usize = pr.mask.values().map(|(_, m)| removed_count(m)).sum();
    assert_eq!(total, 90624, "tiny-random-llama's prunable weights");
    assert_eq!(removed, floor(total, 0.3));
    // One threshold over every layer, on |relevance|.
    let rel = read_st(&scores);
    let (mut all_s, mut all_m) = (Vec::new(), Vec::new());
    for (name, (_, m)) in &pr.mask {
        all_s.extend(abs(&rel[name].f32s()));
        all_m.extend_from_slice(m);
    }
    assert_lowest("global", &all_s, &all_m);
    let shares: BTreeSet<usize> = pr.mask.values().map(|(_, m)| removed_count(m)).collect();
    assert!(
        shares.len() > 1,
        "global scope gave every layer the same count"
    );
}

/// Every run of `m` consecutive inputs in a row removes exactly `n`.
fn assert_n_of_m(what: &str, pr: &Pruned, n: usize, m: usize, check_magnitude: bool) {
    for (name, (shape, mask)) in &pr.mask {
        assert_eq!(shape[1] % m, 0);
        let s = abs(&pr.input[name].f32s());
        for (g, (mg, sg)) in mask.chunks(m).zip(s.chunks(m)).enumerate() {
            assert_eq!(removed_count(mg), n, "{what}: {name} group {g}: {mg:?}");
            if check_magnitude {
                assert_lowest(&format!("{what} {name} group {g}"), sg, mg);
            }
        }
    }
    assert_eq!(pr.report["pattern"], format!("{n}:{m}"));
    let share = pr.report["ratio_achieved_in_pruned_layers"]
        .as_f64()
        .unwrap();
    assert!(
        (share - n as f64 / m as f64).abs() < 1e-12,
        "{what}: {share}"
    );
}

#[test]
fn n_m_patterns_remove_exactly_n_of_every_m_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = common::model_dir("tiny-random-llama");
    let opt = common::model_dir("tiny-random-opt");
    let pr = prune(
        "2:4 magnitude",
        Some(&llama),
        &["--method", "magnitude", "--pattern", "2:4"],
        &tmp.path().join("a"),
    );
    assert_n_of_m("2:4 magnitude", &pr, 2, 4, true);

    let mut extra = vec![
        "--method",
        "wanda",
        "--pattern",
        "2:4",
        "--eval-windows",
        "2",
    ];
    extra.extend_from_slice(CALIB);
    let pr = prune("2:4 wanda", None, &extra, &tmp.path().join("b"));
    assert_n_of_m("2:4 wanda", &pr, 2, 4, false);

    let mut extra = vec!["--method", "lrp", "--pattern", "4:8"];
    extra.extend_from_slice(CALIB);
    let pr = prune("4:8 lrp", Some(&opt), &extra, &tmp.path().join("c"));
    assert_n_of_m("4:8 lrp", &pr, 4, 8, false);

    let pr = prune(
        "1:4 magnitude",
        Some(&opt),
        &["--method", "magnitude", "--pattern", "1:4"],
        &tmp.path().join("d"),
    );
    assert_n_of_m("1:4 magnitude", &pr, 1, 4, true);
}

// ---------------------------------------------------------------------------------------------
// 2. Everything that is not removed is bit-identical

#[test]
fn unremoved_weights_and_other_tensors_are_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let opt = common::model_dir("tiny-random-opt");
    for (label, model) in [("tiny-random-opt", Some(opt.as_path())), ("builtin", None)] {
        for method in ["magnitude", "wanda", "lrp"] {
            let what = format!("{label} {method}");
            let mut extra = vec!["--method", method, "--ratio", "0.4", "--eval-windows", "1"];
            extra.extend_from_slice(CALIB);
            let pr = prune(&what, model, &extra, &tmp.path().join(&what));
            // prune() already compared every tensor; make sure the OPT biases were among them.
            if model.is_some() {
                let biases = pr.input.keys().filter(|n| n.ends_with(".bias")).count();
                assert!(biases >= 12, "{what}: expected OPT biases, found {biases}");
                assert_eq!(pr.mask.len(), 12);
            }
            assert_eq!(pr.output.len(), pr.input.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The written model loads and reproduces the report

fn eval_ppl(model: &Path, text: Option<&Path>, seq_len: usize, windows: usize) -> f64 {
    let mut a = vec!["eval".to_string(), "--model".into(), p(model)];
    if let Some(t) = text {
        a.extend(["--text".to_string(), p(t)]);
    }
    a.extend([
        "--seq-len".to_string(),
        seq_len.to_string(),
        "--max-windows".into(),
        windows.to_string(),
        "--json".into(),
    ]);
    let v = json_of(&run_ok(&a));
    assert_eq!(v["windows"], windows, "eval windows");
    v["ppl"].as_f64().expect("ppl")
}

fn assert_rel(what: &str, a: f64, b: f64, rel: f64) {
    assert!(
        (a - b).abs() <= rel * b.abs(),
        "{what}: {a} vs {b} (relative {:e})",
        (a - b).abs() / b.abs()
    );
}

fn info_json(model: &Path) -> Value {
    json_of(&run_ok(&["info", "--model", &p(model), "--json"]))
}

#[test]
fn written_model_loads_and_reproduces_the_reported_perplexity() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::model_dir("tiny-random-llama");
    let out = tmp.path().join("out");
    let w = p(&wikitext());
    let mut extra = vec![
        "--method",
        "lrp",
        "--eval",
        &w,
        "--eval-windows",
        "4",
        "--eval-seq-len",
        "64",
    ];
    extra.extend_from_slice(CALIB);
    let report = compress_ok(Some(&model), &extra, &out);
    assert_eq!(report["eval"]["seq_len"], 64);
    assert_eq!(report["eval"]["windows"], 4);
    let after = eval_ppl(&out, Some(&wikitext()), 64, 4);
    assert_rel(
        "ppl_after",
        after,
        report["ppl_after"].as_f64().unwrap(),
        1e-6,
    );
    let before = eval_ppl(&model, Some(&wikitext()), 64, 4);
    assert_rel(
        "ppl_before",
        before,
        report["ppl_before"].as_f64().unwrap(),
        1e-6,
    );
    assert!(after != before, "pruning did not change the perplexity");

    // HF layout: every side file of the input copied unchanged, config.json equal up to
    // torch_dtype.
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "tokenizer.model",
    ] {
        let a = std::fs::read(model.join(f)).unwrap();
        let b = std::fs::read(out.join(f)).unwrap_or_else(|e| panic!("{f} not written: {e}"));
        assert!(a == b, "{f} differs from the input's");
    }
    let mut ci = read_json(&model.join("config.json"));
    let co = read_json(&out.join("config.json"));
    assert_eq!(co["torch_dtype"], "float32");
    ci["torch_dtype"] = co["torch_dtype"].clone();
    assert_eq!(ci, co, "config.json changed beyond torch_dtype");

    let (ii, io) = (info_json(&model), info_json(&out));
    assert_eq!(ii["linears"], io["linears"]);
    assert_eq!(ii["parameters"], io["parameters"]);
    assert_eq!(ii["config_sha256"], io["config_sha256"]);
    assert_eq!(io["dtype"], "f32");
    // The plain (non-JSON) info too.
    run_ok(&["info".to_string(), "--model".into(), p(&out)]);
}

#[test]
fn builtin_model_is_evaluated_on_its_text_and_the_output_reproduces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let report = compress_ok(None, &["--method", "magnitude", "--ratio", "0.3"], &out);
    assert_eq!(report["eval"]["file"], "builtin:demo-valid");
    assert_eq!(report["eval"]["seq_len"], 256);
    assert_eq!(report["eval"]["windows"], 64);
    let after = eval_ppl(&out, None, 256, 64);
    assert_rel(
        "ppl_after",
        after,
        report["ppl_after"].as_f64().unwrap(),
        1e-6,
    );
    let before = eval_ppl(&builtin_dir(), None, 256, 64);
    assert_rel(
        "ppl_before",
        before,
        report["ppl_before"].as_f64().unwrap(),
        1e-6,
    );
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        let a = std::fs::read(builtin_dir().join(f)).unwrap();
        let b = std::fs::read(out.join(f)).unwrap_or_else(|e| panic!("{f} not written: {e}"));
        assert!(a == b, "{f} differs from the built-in model's");
    }
    assert!(out.join("config.json").is_file());
}

#[test]
fn sharded_input_gives_sharded_output_with_the_same_shard_names() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("sharded");
    let shards = common::write_sharded("tiny-random-llama", &sharded, 2);
    let w = p(&wikitext());
    let extra = [
        "--method",
        "magnitude",
        "--eval",
        &w,
        "--eval-windows",
        "3",
        "--eval-seq-len",
        "64",
    ];
    let out = tmp.path().join("out");
    let report = compress_ok(Some(&sharded), &extra, &out);
    let files: BTreeSet<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    let expected: BTreeSet<String> = shards.into_iter().collect();
    assert_eq!(files, expected, "the output's weight files");
    assert!(!out.join("model.safetensors").exists());
    assert_eq!(
        weight_map(&out),
        weight_map(&sharded),
        "each tensor stays in its shard"
    );
    let idx = read_json(&out.join("model.safetensors.index.json"));
    let tensors = read_weights(&out);
    let bytes: usize = tensors.values().map(|t| t.data.len()).sum();
    assert_eq!(idx["metadata"]["total_size"], bytes, "index total_size");

    // Same tensors as pruning the single-file model.
    let single = tmp.path().join("single");
    compress_ok(
        Some(&common::model_dir("tiny-random-llama")),
        &extra,
        &single,
    );
    assert!(
        read_weights(&single) == tensors,
        "sharded and single-file outputs differ"
    );

    let after = eval_ppl(&out, Some(&wikitext()), 64, 3);
    assert_rel(
        "sharded ppl_after",
        after,
        report["ppl_after"].as_f64().unwrap(),
        1e-6,
    );
    info_json(&out);
}

// ---------------------------------------------------------------------------------------------
// 4. --scores

fn attribute(model: &Path, extra: &[&str], out: &Path) {
    let mut a = vec!["attribute".to_string(), "--model".into(), p(model)];
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(CALIB.iter().map(|s| s.to_string()));
    a.extend(["--out".to_string(), p(out)]);
    run_ok(&a);
}

/// `compress --method METHOD --scores FILE` on tiny-random-llama: the file's relevance is used
/// as is (lowest |relevance| per row), and gives the same model and mask as attributing the
/// same samples inside compress.
fn check_reused_scores(tmp: &Path, llama: &Path, method: &str, file: &Path) {
    let f = p(file);
    let reused = tmp.join(format!("{method}-reused"));
    let pr = prune(
        method,
        Some(llama),
        &["--method", method, "--scores", &f],
        &reused,
    );
    assert_per_row(method, &pr.mask, |c| floor(c, 0.5));
    assert_eq!(pr.report["scores_file"], f);
    assert_eq!(pr.report["aggregation"], "token_sq");
    assert!(
        pr.report["target"]
            .as_str()
            .is_some_and(|t| t.contains("next-token-logprob")),
        "{}",
        pr.report["target"]
    );
    assert!(
        pr.report["calibration"].is_null(),
        "no calibration with --scores"
    );
    // The reused file's protocol travels into the report.
    let sp = &pr.report["scores_protocol"];
    assert_eq!(sp["samples"], sp["samples_total"], "{sp}");
    assert!(sp["samples"].as_u64().unwrap() > 0, "{sp}");
    assert!(sp["rule"].is_string(), "{sp}");
    assert!(
        sp["data_sha256"].as_str().is_some_and(|h| h.len() == 64),
        "{sp}"
    );
    // Lowest |relevance| per row.
    let rel = read_st(file);
    for (name, (shape, m)) in &pr.mask {
        let s = abs(&rel[name].f32s());
        for (r, (sr, mr)) in s.chunks(shape[1]).zip(m.chunks(shape[1])).enumerate() {
            assert_lowest(&format!("{method} {name} row {r}"), sr, mr);
        }
    }
    // The same samples attributed inside compress give the same model (8 samples: the mean
    // is an exact division).
    let mut extra = vec!["--method", method];
    extra.extend_from_slice(CALIB);
    let fresh = tmp.join(format!("{method}-fresh"));
    prune(method, Some(llama), &extra, &fresh);
    for f in ["model.safetensors", "mask.safetensors"] {
        assert!(
            std::fs::read(reused.join(f)).unwrap() == std::fs::read(fresh.join(f)).unwrap(),
            "{method}: {f} from --scores differs from a fresh attribution"
        );
    }
}

#[test]
fn scores_from_attribute_are_reused_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = common::model_dir("tiny-random-llama");
    let opt = common::model_dir("tiny-random-opt");
    let lrp = tmp.path().join("llama-lrp.safetensors");
    let grad = tmp.path().join("llama-grad.safetensors");
    let opt_lrp = tmp.path().join("opt-lrp.safetensors");
    // compress explains next-token log-probabilities with per-token R² by default; the files
    // must hold the same.
    let defaults = [
        "--aggregation",
        "token-sq",
        "--target",
        "next-token-logprob",
    ];
    attribute(&llama, &defaults, &lrp);
    let mut grad_args = vec!["--rule", "grad"];
    grad_args.extend_from_slice(&defaults);
    attribute(&llama, &grad_args, &grad);
    attribute(&opt, &[], &opt_lrp);

    for (method, file) in [("lrp", &lrp), ("gradient", &grad)] {
        check_reused_scores(tmp.path(), &llama, method, file);
    }

    // A file of another target and aggregation is used as it is, with a note saying so.
    let other = tmp.path().join("llama-logit-abs.safetensors");
    attribute(&llama, &[], &other);
    let r = run_ok(&compress_args(
        Some(&llama),
        &["--method", "lrp", "--scores", &p(&other)],
        &tmp.path().join("other-target"),
    ));
    for part in [
        "note:",
        "'next-token'",
        "'abs'",
        "'next-token-logprob'",
        "'token_sq'",
    ] {
        assert!(r.stderr.contains(part), "{part} missing from: {}", r.stderr);
    }
    std::fs::remove_dir_all(tmp.path().join("other-target")).unwrap();

    // Scores of another model; scores of the wrong rule.
    let before = common::tree(tmp.path());
    let out = tmp.path().join("refused");
    let r = run(&compress_args(
        Some(&llama),
        &["--method", "lrp", "--scores", &p(&opt_lrp)],
        &out,
    ));
    assert_error(
        &r,
        INPUT,
        &["opt-lrp.safetensors", "different model or config"],
    );
    let r = run(&compress_args(
        Some(&llama),
        &["--method", "gradient", "--scores", &p(&lrp)],
        &out,
    ));
    assert_error(
        &r,
        USAGE,
        &[
            "llama-lrp.safetensors",
            "'lrp'",
            "--method gradient",
            "'grad'",
        ],
    );
    let r = run(&compress_args(
        Some(&llama),
        &["--method", "lrp", "--scores", &p(&grad)],
        &out,
    ));
    assert_error(
        &r,
        USAGE,
        &["llama-grad.safetensors", "'grad'", "--method lrp"],
    );
    let missing = tmp.path().join("missing.safetensors");
    let r = run(&compress_args(
        Some(&llama),
        &["--method", "lrp", "--scores", &p(&missing)],
        &out,
    ));
    assert_error(&r, INPUT, &["missing.safetensors"]);
    assert_eq!(
        common::tree(tmp.path()),
        before,
        "a refused run changed the folder"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. --out-dtype

#[test]
fn out_dtype_f16_and_bf16_write_half_tensors_that_load() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::model_dir("tiny-random-llama");
    let w = p(&wikitext());
    let ev = ["--eval", &w, "--eval-windows", "2", "--eval-seq-len", "64"];
    let f32_out = tmp.path().join("f32");
    let mut extra = vec!["--method", "magnitude"];
    extra.extend_from_slice(&ev);
    let r32 = compress_ok(Some(&model), &extra, &f32_out);
    let t32 = read_weights(&f32_out);
    for (flag, dtype, name) in [
        ("f16", Dtype::F16, "float16"),
        ("bf16", Dtype::BF16, "bfloat16"),
    ] {
        let out = tmp.path().join(flag);
        let mut e = extra.clone();
        e.extend(["--out-dtype", flag]);
        compress_ok(Some(&model), &e, &out);
        let t = read_weights(&out);
        assert_eq!(t.keys().collect::<Vec<_>>(), t32.keys().collect::<Vec<_>>());
        for (n, raw) in &t {
            assert_eq!(raw.dtype, dtype, "{flag}: {n}");
            assert_eq!(raw.shape, t32[n].shape, "{flag}: {n}");
            // The same pruned values, rounded to the half type.
            let want: Vec<u8> = t32[n]
                .f32s()
                .iter()
                .flat_map(|&x| match dtype {
                    Dtype::F16 => half::f16::from_f32(x).to_le_bytes(),
                    _ => half::bf16::from_f32(x).to_le_bytes(),
                })
                .collect();
            assert!(
                raw.data == want,
                "{flag}: {n} is not the f32 output rounded to {flag}"
            );
        }
        assert_eq!(read_json(&out.join("config.json"))["torch_dtype"], name);
        assert_eq!(info_json(&out)["disk_dtype"], flag);
        let ppl = eval_ppl(&out, Some(&wikitext()), 64, 2);
        assert_rel(flag, ppl, r32["ppl_after"].as_f64().unwrap(), 2e-2);
    }
}

// ---------------------------------------------------------------------------------------------
// 6. --layers

#[test]
fn layers_regex_limits_pruning_to_matching_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::model_dir("tiny-random-llama");
    // Wanda replays calibration inputs through the pruned blocks, so its unmatched layers must
    // stay untouched too.
    for method in ["magnitude", "lrp", "wanda"] {
        let mut extra = vec!["--method", method, "--layers", "mlp", "--save-mask"];
        extra.extend_from_slice(CALIB);
        let out = tmp.path().join(method);
        let report = compress_ok(Some(&model), &extra, &out);
        assert_eq!(report["layers_regex"], "mlp");
        let input = read_weights(&model);
        let output = read_weights(&out);
        let mask = read_mask(&out);
        let mlp: BTreeSet<String> = linears(&input)
            .into_iter()
            .filter(|n| n.contains(".mlp."))
            .collect();
        assert_eq!(mlp.len(), 6);
        assert_only_masked_changed(method, &input, &output, &mask, &mlp);
        assert_report_matches(method, &report, &output, &mask);
        for (n, t) in &output {
            let zeros = t.f32s().iter().filter(|&&x| x == 0.0).count();
            if n.contains(".mlp.") {
                assert!(zeros > 0, "{method}: {n} was not pruned");
            } else {
                assert!(
                    t == &input[n],
                    "{method}: {n} is not an mlp layer but changed"
                );
            }
        }
        for e in report["sparsity_per_layer"].as_array().unwrap() {
            let l = e["layer"].as_str().unwrap();
            let s = e["sparsity"].as_f64().unwrap();
            assert_eq!(
                s > 0.0,
                l.contains(".mlp."),
                "{method}: {l} has sparsity {s}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Determinism

#[test]
fn same_command_twice_gives_byte_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    for method in ["lrp", "wanda", "gradient"] {
        let mut extra = vec!["--method", method, "--save-mask", "--eval-windows", "2"];
        extra.extend_from_slice(CALIB);
        let a = tmp.path().join(format!("{method}-a"));
        let b = tmp.path().join(format!("{method}-b"));
        let ra = compress_ok(None, &extra, &a);
        let rb = compress_ok(None, &extra, &b);
        for f in [
            "model.safetensors",
            "mask.safetensors",
            "config.json",
            "tokenizer.json",
        ] {
            assert!(
                std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
                "{method}: {f} differs between two identical runs"
            );
        }
        for k in [
            "ppl_before",
            "ppl_after",
            "sparsity_per_layer",
            "calibration",
            "ratio_achieved_in_pruned_layers",
        ] {
            assert_eq!(ra[k], rb[k], "{method}: report {k}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Bad input: clean error, nothing written, inputs untouched

fn names(t: &[(String, Option<Vec<u8>>)]) -> Vec<&str> {
    t.iter().map(|(n, _)| n.as_str()).collect()
}

/// A scratch folder with a copy of tiny-random-llama (`model/`), calibration files and an
/// empty spot for `--out`.
fn sandbox() -> Sandbox {
    let sb = Sandbox::with_model("tiny-random-llama");
    common::write_file(
        sb.root(),
        "short.txt",
        "Once upon a time there was a cat.\n",
    );
    common::write_file(sb.root(), "empty.txt", "");
    sb
}

/// Refused `compress` runs in a `sandbox()`.
trait Refuse {
    fn refuse(&self, args: &[String], code: i32, needles: &[&str]);
    fn refuse_out(&self, extra: &[&str], code: i32, needles: &[&str]);
}

impl Refuse for Sandbox {
    /// Run `compress --model model/ ARGS` (ARGS include --out) and expect a clean refusal that
    /// leaves the whole sandbox as it was.
    fn refuse(&self, args: &[String], code: i32, needles: &[&str]) {
        let before = self.tree();
        let mut a = vec!["compress".to_string(), "--model".into(), p(&self.model())];
        a.extend_from_slice(args);
        let r = run(&a);
        println!("sparc3 {a:?}");
        assert_error(&r, code, needles);
        let after = self.tree();
        assert_eq!(
            names(&after),
            names(&before),
            "entries changed by a refused run {args:?}"
        );
        assert!(
            after == before,
            "file contents changed by a refused run {args:?}"
        );
    }

    fn refuse_out(&self, extra: &[&str], code: i32, needles: &[&str]) {
        let mut a: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        a.extend(["--out".to_string(), p(&self.path("out"))]);
        self.refuse(&a, code, needles);
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn ratio_outside_zero_one_is_refused() {
    let sb = sandbox();
    for r in ["0", "1", "1.5", "nan", "0.0"] {
        sb.refuse_out(
            &["--method", "magnitude", "--ratio", r],
            USAGE,
            &["--ratio", "(0, 1)"],
        );
    }
    sb.refuse_out(
        &["--method", "magnitude", "--ratio=-0.1"],
        USAGE,
        &["--ratio", "-0.1"],
    );
    sb.refuse_out(
        &["--method", "lrp", "--ratio", "2"],
        USAGE,
        &["--ratio", "2"],
    );
}

#[test]
fn negative_ratio_as_separate_argument_names_the_ratio() {
    let sb = sandbox();
    sb.refuse_out(
        &["--method", "magnitude", "--ratio", "-0.1"],
        USAGE,
        &["--ratio"],
    );
}

#[test]
fn bad_patterns_are_refused_naming_the_problem() {
    let sb = sandbox();
    // hidden 64 is not divisible by 3.
    for m in ["magnitude", "wanda", "lrp"] {
        let mut e = vec!["--method", m, "--pattern", "2:3"];
        e.extend_from_slice(CALIB);
        sb.refuse_out(&e, USAGE, &["--pattern 2:3", "input dimension 64"]);
    }
    // 172 (down_proj) is not divisible by 8.
    sb.refuse_out(
        &["--method", "magnitude", "--pattern", "4:8"],
        USAGE,
        &["4:8", "172", "down_proj"],
    );
    for bad in [
        "garbage", "2:", ":4", "0:4", "4:4", "4:2", "2:4:8", "-1:4", "2/4",
    ] {
        let flag = format!("--pattern={bad}");
        sb.refuse_out(
            &["--method", "magnitude", &flag],
            USAGE,
            &["--pattern", bad],
        );
    }
}

#[test]
fn out_equal_to_the_model_directory_is_refused_even_with_force() {
    let sb = sandbox();
    let m = p(&sb.model());
    for out in [
        m.clone(),
        format!("{m}/"),
        format!("{m}/."),
        format!("{}/../model", m),
    ] {
        for force in [false, true] {
            let mut a = strs(&["--method", "magnitude", "--out", &out]);
            if force {
                a.push("--force".into());
            }
            sb.refuse(&a, USAGE, &["--out", "model's own directory"]);
        }
    }
}

#[test]
fn out_inside_the_model_directory_is_refused() {
    let sb = sandbox();
    let out = sb.model().join("pruned");
    sb.refuse(
        &strs(&["--method", "magnitude", "--out", &p(&out)]),
        USAGE,
        &["--out"],
    );
}

#[test]
fn force_onto_a_folder_holding_the_model_keeps_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let outer = tmp.path().join("outer");
    let model = outer.join("model");
    common::copy_model("tiny-random-llama", &model);
    let before = common::tree(tmp.path());
    let a = compress_args(Some(&model), &["--method", "magnitude", "--force"], &outer);
    let r = run(&a);
    let after = common::tree(tmp.path());
    assert!(
        model.join("model.safetensors").is_file(),
        "the input model was deleted by compress --out {} --force (exit {:?}); left: {:?}",
        outer.display(),
        r.code,
        names(&after)
    );
    assert_error(&r, USAGE, &["--out"]);
    assert!(after == before, "the folder holding the model changed");
}

#[test]
fn existing_out_and_unwritable_out_are_refused() {
    let sb = sandbox();
    let out = sb.path("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    for m in ["magnitude", "lrp"] {
        let mut e = vec!["--method", m];
        e.extend_from_slice(CALIB);
        sb.refuse_out(&e, OUTPUT, &["already exists", "--force"]);
    }
    let file = sb.path("short.txt");
    sb.refuse(
        &strs(&["--method", "magnitude", "--out", &p(&file), "--force"]),
        OUTPUT,
        &["not a directory"],
    );
    sb.refuse(
        &strs(&["--method", "magnitude", "--out", &p(&file)]),
        OUTPUT,
        &["already exists"],
    );
    let deep = sb.path("no/such/dir/out");
    sb.refuse(
        &strs(&["--method", "magnitude", "--out", &p(&deep)]),
        OUTPUT,
        &["does not exist"],
    );
}

#[test]
fn unusable_calibration_text_is_refused() {
    let sb = sandbox();
    let short = p(&sb.path("short.txt"));
    let empty = p(&sb.path("empty.txt"));
    let missing = p(&sb.path("missing.txt"));
    for m in ["lrp", "wanda", "gradient"] {
        sb.refuse_out(
            &[
                "--method",
                m,
                "--calib",
                &short,
                "--samples",
                "8",
                "--seq-len",
                "64",
            ],
            INPUT,
            &["short.txt", "too little text", "--seq-len 64"],
        );
        sb.refuse_out(
            &[
                "--method",
                m,
                "--calib",
                &empty,
                "--samples",
                "8",
                "--seq-len",
                "64",
            ],
            INPUT,
            &["empty.txt", "empty"],
        );
        sb.refuse_out(
            &[
                "--method",
                m,
                "--calib",
                &missing,
                "--samples",
                "8",
                "--seq-len",
                "64",
            ],
            INPUT,
            &["missing.txt"],
        );
        sb.refuse_out(
            &["--method", m, "--samples", "0", "--seq-len", "64"],
            USAGE,
            &["--samples"],
        );
        sb.refuse_out(
            &["--method", m, "--samples", "8", "--seq-len", "300"],
            USAGE,
            &["--seq-len 300", "256"],
        );
    }
}

#[test]
fn bad_layers_regex_and_unsupported_combinations_are_refused() {
    let sb = sandbox();
    for m in ["magnitude", "lrp"] {
        let mut e = vec!["--method", m];
        e.extend_from_slice(CALIB);
        let mut a = e.clone();
        a.extend(["--layers", "("]);
        sb.refuse_out(&a, USAGE, &["--layers", "invalid regex"]);
        let mut a = e.clone();
        a.extend(["--layers", "no_such_layer"]);
        sb.refuse_out(&a, USAGE, &["--layers", "matches none"]);
    }
    let mut e = vec!["--method", "wanda", "--scope", "global"];
    e.extend_from_slice(CALIB);
    sb.refuse_out(&e, USAGE, &["wanda", "--scope"]);
    sb.refuse_out(&["--method", "nonsense"], USAGE, &["nonsense"]);
    sb.refuse_out(
        &["--method", "magnitude", "--scope", "column"],
        USAGE,
        &["column"],
    );
    sb.refuse_out(
        &["--method", "magnitude", "--out-dtype", "f8"],
        USAGE,
        &["f8"],
    );
}

#[test]
fn bad_out_dtype_names_its_flag() {
    let sb = sandbox();
    sb.refuse_out(
        &["--method", "magnitude", "--out-dtype", "f8"],
        USAGE,
        &["--out-dtype"],
    );
}

#[test]
fn too_long_eval_seq_len_names_its_flag() {
    let sb = sandbox();
    let w = p(&wikitext());
    sb.refuse_out(
        &[
            "--method",
            "magnitude",
            "--eval",
            &w,
            "--eval-seq-len",
            "1024",
        ],
        USAGE,
        &["--eval-seq-len"],
    );
}

// ---------------------------------------------------------------------------------------------
// 9. No temporary entries left; --force replaces the whole folder

#[test]
fn successful_runs_leave_no_temporary_entries_and_force_replaces_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::model_dir("tiny-random-opt");
    let out = tmp.path().join("out");
    let mut extra = vec!["--method", "lrp", "--save-mask"];
    extra.extend_from_slice(CALIB);
    compress_ok(Some(&model), &extra, &out);
    assert_eq!(
        listing(tmp.path()),
        vec!["out"],
        "entries beside --out after a run"
    );
    assert!(out.join("mask.safetensors").is_file());
    std::fs::write(out.join("stale.txt"), "old").unwrap();

    // Replace it with a different run: nothing of the old folder survives.
    let report = compress_ok(
        Some(&model),
        &["--method", "magnitude", "--ratio", "0.2", "--force"],
        &out,
    );
    assert_eq!(report["method"], "magnitude");
    assert_eq!(
        listing(tmp.path()),
        vec!["out"],
        "entries beside --out after --force"
    );
    let files = listing(&out);
    assert!(
        !files
            .iter()
            .any(|f| f == "stale.txt" || f == "mask.safetensors"),
        "old files survived --force: {files:?}"
    );
    assert!(
        files
            .iter()
            .all(|f| !f.contains(".sparc3-") && !f.starts_with('.')),
        "{files:?}"
    );
    assert_eq!(
        read_json(&out.join("sparc3-report.json"))["ratio_requested"],
        0.2
    );
    let written = read_weights(&out);
    let input = read_weights(&model);
    // Layer scope (magnitude's default): the floor of each layer (plus any zeros the input had).
    let zeros = |t: &Tensors, n: &str| t[n].f32s().iter().filter(|&&x| x == 0.0).count();
    let lin = linears(&input);
    let got: usize = lin.iter().map(|n| zeros(&written, n)).sum();
    let want: usize = lin.iter().map(|n| floor(input[n].f32s().len(), 0.2)).sum();
    let had: usize = lin.iter().map(|n| zeros(&input, n)).sum();
    assert!(
        got >= want && got <= want + had,
        "{got} zeros in the linears, expected {want} (+ up to {had} already zero)"
    );
}

/// SparseGPT prunes half of every adaptive 128-column block (the reference's `<=` threshold may
/// take a few more), zeroes exactly the masked weights, updates the survivors, and improves on
/// Wanda's perplexity on the demo model; `--update obs` keeps LRP's mask exactly and moves the
/// surviving weights.
#[test]
fn sparsegpt_and_obs_update() {
    let tmp = tempfile::tempdir().unwrap();
    let sg = tmp.path().join("sg");
    let r = compress_ok(
        None,
        &["--method", "sparsegpt", "--samples", "32", "--save-mask"],
        &sg,
    );
    assert_eq!(r["method"], "sparsegpt");
    let achieved = r["ratio_achieved_in_pruned_layers"].as_f64().unwrap();
    assert!((0.5..0.505).contains(&achieved), "{achieved}");
    let input = read_weights(&input_dir(None));
    let output = read_weights(&sg);
    let mask = read_mask(&sg);
    let mut moved = 0usize;
    for (name, (_, m)) in &mask {
        let o = output[name].f32s();
        let i = input[name].f32s();
        for ((o, i), m) in o.iter().zip(&i).zip(m) {
            if *m == 1 {
                assert_eq!(o.to_bits(), 0, "{name}: removed weights are +0.0");
            } else if o != i {
                moved += 1;
            }
        }
    }
    assert!(
        moved > 1000,
        "OBS updates the surviving weights ({moved} moved)"
    );
    let wanda = compress_ok(
        None,
        &["--method", "wanda", "--samples", "32"],
        &tmp.path().join("w"),
    );
    let (ps, pw) = (
        r["ppl_after"].as_f64().unwrap(),
        wanda["ppl_after"].as_f64().unwrap(),
    );
    println!("demo 50%: sparsegpt {ps:.3}, wanda {pw:.3}");
    assert!(ps < pw, "sparsegpt {ps} vs wanda {pw}");
    // 2:4 with SparseGPT: exactly 2 of every 4 per row.
    let nm = tmp.path().join("nm");
    compress_ok(
        None,
        &[
            "--method",
            "sparsegpt",
            "--pattern",
            "2:4",
            "--samples",
            "8",
            "--save-mask",
        ],
        &nm,
    );
    for (name, (shape, m)) in read_mask(&nm) {
        for g in m.chunks(4) {
            assert_eq!(removed_count(g), 2, "{name} {shape:?}");
        }
    }
    // LRP mask with OBS reconstruction: same mask as plain LRP, different survivors.
    let plain = tmp.path().join("lrp");
    let obs = tmp.path().join("lrp-obs");
    let a = compress_ok(None, &["--samples", "16", "--save-mask"], &plain);
    let b = compress_ok(
        None,
        &["--samples", "16", "--save-mask", "--update", "obs"],
        &obs,
    );
    assert_eq!(b["update"], "obs");
    assert_eq!(read_mask(&plain), read_mask(&obs), "the mask is kept");
    assert_ne!(read_weights(&plain), read_weights(&obs));
    println!(
        "demo 50% LRP: {:.3} → with OBS update {:.3}",
        a["ppl_after"].as_f64().unwrap(),
        b["ppl_after"].as_f64().unwrap()
    );
}

/// `sweep` reuses one attribution per method for every ratio: each point must equal what
/// `compress` reports for the same method and ratio, run on its own.
#[test]
fn sweep_points_equal_separate_compress_runs_and_the_chart_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let mut args = strs(&[
        "sweep",
        "--ratios",
        "0.5,0.3",
        "--methods",
        "lrp,magnitude,wanda",
        "--eval-windows",
        "4",
        "--json",
        "--out",
        &p(&out),
    ]);
    args.extend(strs(CALIB));
    let r = run_ok(&args);
    let printed = json_of(&r);
    let rep = read_json(&out.join("sweep-report.json"));
    assert_eq!(printed, rep);
    let svg = std::fs::read_to_string(out.join("sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 3);
    let series = rep["series"].as_array().unwrap();
    assert_eq!(series.len(), 3);
    for s in series {
        let m = s["method"].as_str().unwrap();
        let pts = s["points"].as_array().unwrap();
        // Sorted ascending.
        assert_eq!(pts[0]["ratio"], 0.3);
        assert_eq!(pts[1]["ratio"], 0.5);
        for pt in pts {
            let ratio = pt["ratio"].as_f64().unwrap().to_string();
            let o = dir.path().join(format!("c-{m}-{ratio}"));
            let mut e = vec!["--method", m, "--ratio", &ratio, "--eval-windows", "4"];
            e.extend_from_slice(CALIB);
            let c = compress_ok(None, &e, &o);
            assert_eq!(
                pt["ppl"].as_f64(),
                c["ppl_after"].as_f64(),
                "{m} at {ratio}: sweep and compress disagree"
            );
            assert_eq!(rep["ppl_dense"], c["ppl_before"]);
        }
    }
    // Bad ratios: usage error, nothing written.
    let out2 = dir.path().join("bad");
    let r = run(&strs(&["sweep", "--ratios", "0.5,1.2", "--out", &p(&out2)]));
    assert_error(&r, USAGE, &["--ratios", "1.2"]);
    assert!(!out2.exists());
}
