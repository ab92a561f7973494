//! `sparc3 attribute` and `sparc3 merge` through the real binary: sharded runs merge into the
//! file a single run writes, `ids` records are used as is, runs are deterministic across
//! repeats, thread counts and memory modes, and bad inputs fail cleanly (documented exit code,
//! one `error:` line, nothing on stdout, no output or temp file left behind, inputs untouched).

use crate::common::{
    self, assert_error, command_args, listing, p, run, run_ok, smollm2, Sandbox, INPUT, OUTPUT,
    USAGE,
};
use sparc3::lrp::file::RelevanceFile;
use std::path::{Path, PathBuf};

/// Relative tolerance: max |a − b| ≤ REL · max |a| for every tensor.
const REL: f32 = 1e-6;

/// `attribute [--model M] EXTRA... --out OUT`, as strings.
fn attribute_args(model: Option<&Path>, extra: &[&str], out: &Path) -> Vec<String> {
    command_args("attribute", model, extra, out)
}

/// Run `attribute` successfully and read the file it wrote.
fn attribute(model: Option<&Path>, extra: &[&str], out: &Path) -> RelevanceFile {
    run_ok(&attribute_args(model, extra, out));
    read(out)
}

fn merge(files: &[&Path], out: &Path) -> RelevanceFile {
    let mut v = vec!["merge".to_string()];
    v.extend(files.iter().map(|f| p(f)));
    v.push("--out".into());
    v.push(p(out));
    run_ok(&v);
    read(out)
}

fn read(path: &Path) -> RelevanceFile {
    RelevanceFile::read(path).unwrap_or_else(|e| panic!("reading {}: {e:#}", path.display()))
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

fn assert_finite(what: &str, f: &RelevanceFile) {
    for (name, (_, v)) in &f.tensors {
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{what}: tensor {name} holds a non-finite value"
        );
    }
}

/// Same tensor names and shapes, `tokens.ids` equal, every other tensor within
/// `rel · max|a|`. Returns the worst relative difference seen.
fn assert_close(what: &str, a: &RelevanceFile, b: &RelevanceFile, rel: f32) -> f32 {
    let ka: Vec<&String> = a.tensors.keys().collect();
    let kb: Vec<&String> = b.tensors.keys().collect();
    assert_eq!(ka, kb, "{what}: tensor names differ");
    assert_finite(what, a);
    assert_finite(what, b);
    let mut worst = 0f32;
    let mut any_nonzero = false;
    for (name, (sa, va)) in &a.tensors {
        let (sb, vb) = &b.tensors[name];
        assert_eq!(sa, sb, "{what}: shape of {name}");
        assert_eq!(va.len(), vb.len(), "{what}: length of {name}");
        if name == "tokens.ids" {
            assert_eq!(va, vb, "{what}: tokens.ids differ");
            continue;
        }
        let scale = max_abs(va);
        any_nonzero |= scale > 0.0 && name.ends_with(".weight");
        let diff = va
            .iter()
            .zip(vb)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= rel * scale,
            "{what}: {name} differs by {diff:e} (max |a| = {scale:e}, allowed {:e})",
            rel * scale
        );
        if scale > 0.0 {
            worst = worst.max(diff / scale);
        }
    }
    assert!(any_nonzero, "{what}: every weight relevance is zero");
    worst
}

/// The number of values whose bits differ between two files of the same tensor names and
/// shapes (asserted).
fn count_bit_differences(a: &RelevanceFile, b: &RelevanceFile) -> usize {
    let ka: Vec<&String> = a.tensors.keys().collect();
    let kb: Vec<&String> = b.tensors.keys().collect();
    assert_eq!(ka, kb, "tensor names differ");
    let mut n = 0;
    for (name, (sa, va)) in &a.tensors {
        let (sb, vb) = &b.tensors[name];
        assert_eq!(sa, sb, "shape of {name}");
        n += va
            .iter()
            .zip(vb)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
    }
    n
}

fn assert_bit_identical(what: &str, a: &RelevanceFile, b: &RelevanceFile) {
    let n = count_bit_differences(a, b);
    assert_eq!(n, 0, "{what}: {n} values are not bit-identical");
}

// ---------------------------------------------------------------------------------------------
// 1. Shard, then merge == one run.
// ---------------------------------------------------------------------------------------------

fn shard_merge_matches_single(model: Option<&Path>, aggregation: &str) {
    shard_merge_matches_single_for(model, aggregation, "next-token");
}

fn shard_merge_matches_single_for(model: Option<&Path>, aggregation: &str, target: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let base = [
        "--samples",
        "6",
        "--seq-len",
        "64",
        "--aggregation",
        aggregation,
        "--target",
        target,
    ];
    let single = attribute(model, &base, &d.join("single.st"));
    assert_eq!(single.meta.samples, 6);
    assert_eq!(single.meta.samples_total, 6);
    assert_eq!(single.meta.shards, vec![0]);
    assert_eq!(single.meta.shard_count, 1);
    assert_eq!(single.meta.seq_len, 64);
    assert_eq!(
        single.meta.aggregation.name(),
        aggregation.replace('-', "_")
    );
    assert!(
        single.meta.target.contains(target),
        "{}",
        single.meta.target
    );
    assert_eq!(single.tensors["tokens.ids"].0, vec![6, 64]);

    let mut shard_paths = Vec::new();
    for i in 0..3 {
        let path = d.join(format!("shard{i}.st"));
        let spec = format!("{i}/3");
        let mut args = base.to_vec();
        args.extend(["--shard", spec.as_str()]);
        let s = attribute(model, &args, &path);
        assert_eq!(s.meta.samples, 2, "shard {i}");
        assert_eq!(s.meta.samples_total, 6, "shard {i}");
        assert_eq!(s.meta.shards, vec![i], "shard {i}");
        assert_eq!(s.meta.shard_count, 3, "shard {i}");
        assert_eq!(s.tensors["tokens.ids"].0, vec![2, 64], "shard {i}");
        shard_paths.push(path);
    }
    // Given out of order: the merge must put the shards in order itself.
    let merged = merge(
        &[&shard_paths[2], &shard_paths[0], &shard_paths[1]],
        &d.join("merged.st"),
    );
    assert_eq!(merged.meta.samples, 6);
    assert_eq!(merged.meta.samples_total, 6);
    assert_eq!(merged.meta.shards, vec![0, 1, 2]);
    assert_eq!(merged.meta.shard_count, 3);
    // Everything else in the metadata is the single run's.
    let mut expect = single.meta.clone();
    expect.shards = vec![0, 1, 2];
    expect.shard_count = 3;
    assert_eq!(merged.meta, expect, "merged metadata");
    let what = format!("{model:?} {aggregation}: single vs merged shards");
    let worst = assert_close(&what, &single, &merged, REL);
    println!("{what}: worst relative difference {worst:e}");

    // Merging in two steps ((0 + 1) + 2) gives the same file.
    let m01 = merge(&[&shard_paths[0], &shard_paths[1]], &d.join("m01.st"));
    assert_eq!(m01.meta.samples, 4);
    assert_eq!(m01.meta.shards, vec![0, 1]);
    let m = merge(&[&d.join("m01.st"), &shard_paths[2]], &d.join("m012.st"));
    assert_eq!(m.meta, merged.meta);
    assert_close(&format!("{what} (two steps)"), &single, &m, REL);

    if aggregation == "signed" {
        let neg = single
            .tensors
            .iter()
            .filter(|(k, _)| k.ends_with(".weight"))
            .any(|(_, (_, v))| v.iter().any(|&x| x < 0.0));
        assert!(neg, "signed aggregation gave no negative weight relevance");
    } else {
        for (k, (_, v)) in &single.tensors {
            if !k.starts_with("tokens.") {
                assert!(v.iter().all(|&x| x >= 0.0), "abs aggregation: {k} < 0");
            }
        }
    }
}

#[test]
fn shard_merge_equals_single_builtin_abs() {
    shard_merge_matches_single(None, "abs");
}

#[test]
fn shard_merge_equals_single_builtin_signed() {
    shard_merge_matches_single(None, "signed");
}

#[test]
fn shard_merge_equals_single_builtin_logprob_token_sq() {
    shard_merge_matches_single_for(None, "token-sq", "next-token-logprob");
}

#[test]
fn shard_merge_equals_single_opt_abs() {
    shard_merge_matches_single(Some(&common::model_dir("tiny-random-opt")), "abs");
}

#[test]
fn shard_merge_equals_single_opt_signed() {
    shard_merge_matches_single(Some(&common::model_dir("tiny-random-opt")), "signed");
}

/// Token tables are concatenated "in shard order": a partial merge holding shards 0 and 2,
/// merged with shard 1, must still give the single run's token table.
#[test]
fn merge_of_non_contiguous_partial_keeps_token_order() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let base = ["--samples", "3", "--seq-len", "16"];
    let single = attribute(None, &base, &d.join("single.st"));
    let mut paths = Vec::new();
    for i in 0..3 {
        let path = d.join(format!("s{i}.st"));
        let spec = format!("{i}/3");
        let mut args = base.to_vec();
        args.extend(["--shard", spec.as_str()]);
        attribute(None, &args, &path);
        paths.push(path);
    }
    merge(&[&paths[0], &paths[2]], &d.join("m02.st"));
    let m = merge(&[&d.join("m02.st"), &paths[1]], &d.join("m.st"));
    assert_eq!(m.meta.shards, vec![0, 1, 2]);
    assert_close("(0+2)+1 vs single", &single, &m, REL);
}

// ---------------------------------------------------------------------------------------------
// 2. SmolLM2 (GGUF Q4_1) on C4.
// ---------------------------------------------------------------------------------------------

#[test]
fn smollm2_c4_shards_merge_and_layout() {
    let model = smollm2();
    assert!(model.is_file(), "{} is missing", model.display());
    let c4 = common::data("c4/c4_en_first1000.jsonl");
    let c4s = p(&c4);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let base = ["--data", c4s.as_str(), "--samples", "4", "--seq-len", "64"];
    let mut shards = Vec::new();
    for i in 0..2 {
        let path = d.join(format!("shard{i}.st"));
        let spec = format!("{i}/2");
        let mut args = base.to_vec();
        args.extend(["--shard", spec.as_str()]);
        run_ok(&attribute_args(Some(&model), &args, &path));
        shards.push(path);
    }
    let merged_path = d.join("merged.st");
    merge(&[&shards[1], &shards[0]], &merged_path);
    for s in &shards {
        std::fs::remove_file(s).unwrap(); // 425 MB each
    }
    let merged = read(&merged_path);
    std::fs::remove_file(&merged_path).unwrap();
    let single_path = d.join("single.st");
    let single = attribute(Some(&model), &base, &single_path);

    let m = &single.meta;
    assert_eq!(m.samples, 4);
    assert_eq!(m.samples_total, 4);
    assert_eq!(m.seq_len, 64);
    assert_eq!(m.rule, "lrp");
    assert!(m.recipe.starts_with("wanda-c4"), "recipe {}", m.recipe);
    assert_eq!(m.data_file, c4s);
    assert_eq!(merged.meta.samples, 4);
    assert_eq!(merged.meta.shards, vec![0, 1]);
    assert_eq!(merged.meta.shard_count, 2);
    assert_eq!(merged.meta.data_sha256, m.data_sha256);
    assert_eq!(merged.meta.config_sha256, m.config_sha256);

    // Layout: one tensor per decoder linear weight, with the model's shapes.
    let shapes = [
        ("self_attn.q_proj", [576, 576]),
        ("self_attn.k_proj", [192, 576]),
        ("self_attn.v_proj", [192, 576]),
        ("self_attn.o_proj", [576, 576]),
        ("mlp.gate_proj", [1536, 576]),
        ("mlp.up_proj", [1536, 576]),
        ("mlp.down_proj", [576, 1536]),
    ];
    let weights: Vec<&String> = single
        .tensors
        .keys()
        .filter(|k| k.ends_with(".weight"))
        .collect();
    assert_eq!(weights.len(), 210, "weight tensors: {weights:?}");
    for layer in 0..30 {
        for (lin, shape) in &shapes {
            let name = format!("model.layers.{layer}.{lin}.weight");
            let (s, v) = single
                .tensors
                .get(&name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(s.as_slice(), shape.as_slice(), "shape of {name}");
            assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite");
            assert!(v.iter().all(|&x| x >= 0.0), "{name}: negative (abs)");
            assert!(v.iter().any(|&x| x > 0.0), "{name}: all zero");
        }
        let neurons = format!("neurons.model.layers.{layer}.mlp");
        assert_eq!(single.tensors[&neurons].0, vec![1536], "{neurons}");
        let heads = format!("heads.model.layers.{layer}.self_attn");
        assert_eq!(single.tensors[&heads].0, vec![9], "{heads}");
    }
    assert_eq!(single.tensors["tokens.ids"].0, vec![4, 64]);
    assert!(single.tensors["tokens.ids"]
        .1
        .iter()
        .all(|&x| (0.0..49152.0).contains(&x) && x.fract() == 0.0));

    let worst = assert_close("smollm2: single vs 2 merged shards", &single, &merged, REL);
    println!("smollm2: worst relative difference {worst:e}");
}

// ---------------------------------------------------------------------------------------------
// 3. `ids` records are used as is.
// ---------------------------------------------------------------------------------------------

fn write_ids(path: &Path, records: &[Vec<u32>]) {
    let text: String = records
        .iter()
        .map(|r| format!("{}\n", serde_json::json!({ "ids": r })))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// The mean of `parts` (every tensor but the token table), with `like`'s metadata.
fn mean_of(parts: &[RelevanceFile], like: &RelevanceFile) -> RelevanceFile {
    let mut mean = RelevanceFile {
        meta: like.meta.clone(),
        tensors: Default::default(),
    };
    for (name, (shape, _)) in &parts[0].tensors {
        if name.starts_with("tokens.") {
            continue;
        }
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n)
            .map(|j| {
                (parts
                    .iter()
                    .map(|f| f.tensors[name].1[j] as f64)
                    .sum::<f64>()
                    / parts.len() as f64) as f32
            })
            .collect();
        mean.tensors.insert(name.clone(), (shape.clone(), v));
    }
    mean
}

/// `f` without its token table.
fn without_tokens(f: &RelevanceFile) -> RelevanceFile {
    RelevanceFile {
        meta: f.meta.clone(),
        tensors: f
            .tensors
            .iter()
            .filter(|(k, _)| !k.starts_with("tokens."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[test]
fn ids_records_are_used_as_is() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let records: Vec<Vec<u32>> = vec![
        vec![0, 5, 9, 17, 33, 100],
        vec![0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 2047],
        vec![0, 42, 7],
    ];
    let data = d.join("ids.jsonl");
    write_ids(&data, &records);
    let ds = p(&data);
    let args = |seed: &'static str| {
        vec![
            "--data",
            ds.as_str(),
            "--samples",
            "3",
            "--seq-len",
            "8",
            "--seed",
            seed,
        ]
    };
    let a = attribute(None, &args("0"), &d.join("a.st"));
    assert_eq!(a.meta.samples, 3);
    assert_eq!(a.meta.samples_total, 3);
    assert_eq!(a.meta.recipe, "ids-records");
    assert_eq!(a.meta.seq_len, 8);
    assert_eq!(a.meta.data_file, ds);
    assert_finite("ids records", &a);
    // No sampling: the seed changes nothing but the metadata.
    let b = attribute(None, &args("12345"), &d.join("b.st"));
    assert_eq!(b.meta.seed, 12345);
    assert_bit_identical("ids records, seed 0 vs 12345", &a, &b);

    // Each record on its own (the long one cut to --seq-len by hand): their mean is the run.
    let mut parts = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let cut: Vec<u32> = r.iter().take(8).copied().collect();
        let f = d.join(format!("one{i}.jsonl"));
        write_ids(&f, std::slice::from_ref(&cut));
        let fs = p(&f);
        let one = attribute(
            None,
            &["--data", &fs, "--samples", "1", "--seq-len", "8"],
            &d.join(format!("one{i}.st")),
        );
        assert_eq!(one.meta.samples, 1);
        // The sample is exactly the record.
        let ids: Vec<f32> = cut.iter().map(|&x| x as f32).collect();
        assert_eq!(one.tensors["tokens.ids"], (vec![1, cut.len()], ids));
        parts.push(one);
    }
    let mean = mean_of(&parts, &a);
    let a_weights = without_tokens(&a);
    let worst = assert_close("ids records vs per-record runs", &a_weights, &mean, REL);
    println!("ids records: worst relative difference to per-record mean {worst:e}");

    // Records of one length: the token table is the records, in file order.
    let equal: Vec<Vec<u32>> = vec![
        vec![0, 5, 9, 17, 33],
        vec![0, 1000, 4, 2047, 6],
        vec![7, 42, 7, 42, 7],
    ];
    let eq = d.join("equal.jsonl");
    write_ids(&eq, &equal);
    let eqs = p(&eq);
    let e = attribute(
        None,
        &["--data", &eqs, "--samples", "3", "--seq-len", "8"],
        &d.join("e.st"),
    );
    let flat: Vec<f32> = equal.iter().flatten().map(|&x| x as f32).collect();
    assert_eq!(e.tensors["tokens.ids"], (vec![3, 5], flat));
    // --samples 2 takes the first two records.
    let two = attribute(
        None,
        &["--data", &eqs, "--samples", "2", "--seq-len", "8"],
        &d.join("two.st"),
    );
    assert_eq!(two.meta.samples, 2);
    assert_eq!(two.meta.samples_total, 2);
    let flat2: Vec<f32> = equal[..2].iter().flatten().map(|&x| x as f32).collect();
    assert_eq!(two.tensors["tokens.ids"], (vec![2, 5], flat2));
}

// ---------------------------------------------------------------------------------------------
// 4. Determinism.
// ---------------------------------------------------------------------------------------------

#[test]
fn same_command_twice_gives_identical_content() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let opt = common::model_dir("tiny-random-opt");
    for (i, model) in [None, Some(opt.as_path())].into_iter().enumerate() {
        let args = ["--samples", "3", "--seq-len", "32", "--seed", "3"];
        let a = attribute(model, &args, &d.join(format!("a{i}.st")));
        let b = attribute(model, &args, &d.join(format!("b{i}.st")));
        assert_eq!(a.meta, b.meta, "{model:?}: metadata");
        assert_bit_identical(&format!("{model:?}: repeated run"), &a, &b);
        // A different seed draws different samples: the comparison above can fail.
        let c = attribute(
            model,
            &["--samples", "3", "--seq-len", "32", "--seed", "4"],
            &d.join(format!("c{i}.st")),
        );
        assert!(count_bit_differences(&a, &c) > 0, "{model:?}: seed ignored");
    }
}

#[test]
fn same_command_twice_gives_byte_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let args = ["--samples", "2", "--seq-len", "16"];
    // Several repeats: a per-process random order shows up with probability 1 − 2^−5.
    let first = {
        run_ok(&attribute_args(None, &args, &d.join("r0.st")));
        std::fs::read(d.join("r0.st")).unwrap()
    };
    for i in 1..6 {
        let path = d.join(format!("r{i}.st"));
        run_ok(&attribute_args(None, &args, &path));
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes == first, "run {i} is not byte-identical to run 0");
    }
}

#[test]
fn thread_count_does_not_change_the_result() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let opt = common::model_dir("tiny-random-opt");
    for (i, model) in [None, Some(opt.as_path())].into_iter().enumerate() {
        let t1 = attribute(
            model,
            &["--samples", "3", "--seq-len", "64", "--threads", "1"],
            &d.join(format!("t1_{i}.st")),
        );
        let t2 = attribute(
            model,
            &["--samples", "3", "--seq-len", "64", "--threads", "2"],
            &d.join(format!("t2_{i}.st")),
        );
        assert_eq!(t1.meta, t2.meta);
        assert_bit_identical(&format!("{model:?}: --threads 1 vs 2"), &t1, &t2);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Memory modes.
// ---------------------------------------------------------------------------------------------

#[test]
fn memory_store_and_recompute_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let opt = common::model_dir("tiny-random-opt");
    let llama = common::model_dir("tiny-random-llama");
    for (i, model) in [None, Some(opt.as_path()), Some(llama.as_path())]
        .into_iter()
        .enumerate()
    {
        for rule in ["lrp", "grad"] {
            let run_mode = |mode: &str| {
                let out = d.join(format!("{i}_{rule}_{mode}.st"));
                let args = [
                    "--samples",
                    "2",
                    "--seq-len",
                    "48",
                    "--rule",
                    rule,
                    "--memory",
                    mode,
                    "--json",
                ];
                let r = run_ok(&attribute_args(model, &args, &out));
                let v = common::json_of(&r);
                assert_eq!(v["memory_mode"], mode, "{}", r.stdout);
                read(&out)
            };
            let store = run_mode("store");
            let recompute = run_mode("recompute");
            assert_eq!(store.meta, recompute.meta);
            let what = format!("{model:?} {rule}: store vs recompute");
            let worst = assert_close(&what, &store, &recompute, REL);
            let bits = count_bit_differences(&store, &recompute);
            println!(
                "{what}: worst relative difference {worst:e}, {bits} values not bit-identical"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Bad input.
// ---------------------------------------------------------------------------------------------

/// A sandbox for refusals: inputs in `in/`, outputs aimed at the empty `out/`.
fn bad() -> Sandbox {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path("in")).unwrap();
    std::fs::create_dir(sb.path("out")).unwrap();
    sb
}

/// What the bad-input tests do in a `bad()` sandbox.
trait Bad {
    fn input(&self, name: &str) -> PathBuf;
    fn out_dir(&self) -> PathBuf;
    fn out(&self) -> PathBuf;
    fn write(&self, name: &str, text: &str) -> String;
    fn refuse(&self, args: &[String], code: i32, needles: &[&str]);
    fn attribute(&self, extra: &[&str], code: i32, needles: &[&str]);
    fn shard(&self, name: &str, model: Option<&Path>, i: usize, extra: &[&str]) -> String;
    fn merge(&self, files: &[&str], code: i32, needles: &[&str]);
}

impl Bad for Sandbox {
    fn input(&self, name: &str) -> PathBuf {
        self.path("in").join(name)
    }
    fn out_dir(&self) -> PathBuf {
        self.path("out")
    }
    fn out(&self) -> PathBuf {
        self.out_dir().join("rel.st")
    }
    /// Write `in/NAME`; returns its path as an argument.
    fn write(&self, name: &str, text: &str) -> String {
        p(&common::write_file(&self.path("in"), name, text))
    }
    /// `sparc3 ARGS` fails with `code` and an error line holding `needles`; `out/` and `in/`
    /// are exactly as before (no output, no temp file, inputs untouched).
    fn refuse(&self, args: &[String], code: i32, needles: &[&str]) {
        let in_before = common::snapshot_dir(&self.path("in"));
        let out_before = listing(&self.out_dir());
        let r = run(args);
        assert_error(&r, code, needles);
        assert_eq!(
            listing(&self.out_dir()),
            out_before,
            "sparc3 {args:?} left files in the output folder"
        );
        assert!(
            common::snapshot_dir(&self.path("in")) == in_before,
            "sparc3 {args:?} changed its inputs"
        );
    }
    /// `attribute` on the built-in model with `extra`, writing `out/rel.st`.
    fn attribute(&self, extra: &[&str], code: i32, needles: &[&str]) {
        self.refuse(&attribute_args(None, extra, &self.out()), code, needles);
    }
    /// A shard (i/2, 2 samples of 16 tokens) of a small run, written to `in/NAME`.
    fn shard(&self, name: &str, model: Option<&Path>, i: usize, extra: &[&str]) -> String {
        let spec = format!("{i}/2");
        let mut args = vec![
            "--samples",
            "2",
            "--seq-len",
            "16",
            "--shard",
            spec.as_str(),
        ];
        args.extend_from_slice(extra);
        let path = self.input(name);
        run_ok(&attribute_args(model, &args, &path));
        p(&path)
    }
    fn merge(&self, files: &[&str], code: i32, needles: &[&str]) {
        let mut v = vec!["merge".to_string()];
        v.extend(files.iter().map(|s| s.to_string()));
        v.push("--out".into());
        v.push(p(&self.out()));
        self.refuse(&v, code, needles);
    }
}

#[test]
fn bad_data_files() {
    let b = bad();
    let empty = b.write("empty.txt", "");
    b.attribute(
        &["--data", &empty, "--samples", "2", "--seq-len", "16"],
        INPUT,
        &["empty.txt", "empty"],
    );
    let blank = b.write("blank.jsonl", "\n  \n\n");
    b.attribute(
        &["--data", &blank, "--samples", "2", "--seq-len", "16"],
        INPUT,
        &["blank.jsonl"],
    );
    let short = b.write("short.txt", "Hello there, a short text.");
    b.attribute(
        &["--data", &short, "--samples", "2", "--seq-len", "64"],
        INPUT,
        &["short.txt", "too little text", "--seq-len 64"],
    );
    let short_doc = b.write("shortdoc.jsonl", "{\"text\": \"Only a few words here.\"}\n");
    b.attribute(
        &["--data", &short_doc, "--samples", "2", "--seq-len", "64"],
        INPUT,
        &["shortdoc.jsonl", "--seq-len 64"],
    );
    let broken = b.write(
        "broken.jsonl",
        "{\"text\": \"first document, fine\"}\n{\"text\": \"second\"}\n{\"text\": broken\n{\"text\": \"fourth\"}\n",
    );
    b.attribute(
        &["--data", &broken, "--samples", "2", "--seq-len", "4"],
        INPUT,
        &["broken.jsonl", "line 3"],
    );
    let missing = p(&b.input("missing.txt"));
    b.attribute(
        &["--data", &missing, "--samples", "2", "--seq-len", "16"],
        INPUT,
        &["missing.txt"],
    );
}

#[test]
fn bad_ids_records() {
    let b = bad();
    let short = b.write(
        "short_ids.jsonl",
        "{\"ids\": [0, 5, 9]}\n{\"ids\": [7]}\n{\"ids\": [1, 2, 3]}\n",
    );
    b.attribute(
        &["--data", &short, "--samples", "3", "--seq-len", "8"],
        INPUT,
        &["short_ids.jsonl", "line 2"],
    );
    let empty_rec = b.write("empty_ids.jsonl", "{\"ids\": [0, 5, 9]}\n{\"ids\": []}\n");
    b.attribute(
        &["--data", &empty_rec, "--samples", "2", "--seq-len", "8"],
        INPUT,
        &["empty_ids.jsonl", "line 2"],
    );
    let negative = b.write(
        "neg_ids.jsonl",
        "{\"ids\": [0, 5, 9]}\n{\"ids\": [4, -1, 2]}\n",
    );
    b.attribute(
        &["--data", &negative, "--samples", "2", "--seq-len", "8"],
        INPUT,
        &["neg_ids.jsonl", "line 2"],
    );
    let few = b.write("few.jsonl", "{\"ids\": [0, 5, 9]}\n{\"ids\": [4, 1, 2]}\n");
    b.attribute(
        &["--data", &few, "--samples", "3", "--seq-len", "8"],
        INPUT,
        &["few.jsonl", "--samples 3"],
    );
}

#[test]
fn ids_outside_the_vocabulary() {
    let b = bad();
    let big = b.write(
        "big_ids.jsonl",
        "{\"ids\": [0, 5, 9]}\n{\"ids\": [1, 2, 2048]}\n",
    );
    b.attribute(
        &["--data", &big, "--samples", "2", "--seq-len", "8"],
        INPUT,
        &["big_ids.jsonl", "line 2", "2048"],
    );
}

#[test]
fn jsonl_without_a_long_enough_document_fails_instead_of_hanging() {
    let b = bad();
    // Document 1 has > 16 characters but < 16 tokens; document 2 is short. No window exists.
    let data = b.write(
        "few_tokens.jsonl",
        "{\"text\": \"the the the the the the the the the the\"}\n{\"text\": \"and\"}\n",
    );
    let args = attribute_args(
        None,
        &["--data", &data, "--samples", "1", "--seq-len", "16"],
        &b.out(),
    );
    let r = common::run_bin_env(
        &args,
        &[("HF_HUB_OFFLINE", "1")],
        std::time::Duration::from_secs(20),
    );
    assert_error(&r, INPUT, &["few_tokens.jsonl", "--seq-len 16"]);
    assert!(listing(&b.out_dir()).is_empty());
}

#[test]
fn bad_flag_values() {
    let b = bad();
    b.attribute(&["--seq-len", "1", "--samples", "2"], USAGE, &["--seq-len"]);
    b.attribute(&["--seq-len", "0", "--samples", "2"], USAGE, &["--seq-len"]);
    b.attribute(
        &["--samples", "0", "--seq-len", "16"],
        USAGE,
        &["--samples"],
    );
    b.attribute(
        &[
            "--samples",
            "1",
            "--seq-len",
            "16",
            "--target",
            "last",
            "--token",
            "2048",
        ],
        USAGE,
        &["--token 2048", "vocabulary", "2048"],
    );
    b.attribute(
        &[
            "--samples",
            "1",
            "--seq-len",
            "16",
            "--target",
            "logit-diff",
            "--token",
            "5",
        ],
        USAGE,
        &["logit-diff", "--foil"],
    );
    b.attribute(
        &[
            "--samples",
            "1",
            "--seq-len",
            "16",
            "--target",
            "logit-diff",
            "--token",
            "5",
            "--foil",
            "4096",
        ],
        USAGE,
        &["--foil 4096", "vocabulary"],
    );
    for bad in ["3/3", "a/b", "1/0", "2", "1/-1", "0/0", "1/2/3"] {
        b.attribute(
            &["--samples", "3", "--seq-len", "16", "--shard", bad],
            USAGE,
            &["--shard"],
        );
    }
    // More shards than samples: shard 0 of 3 over 2 samples would be empty.
    b.attribute(
        &["--samples", "2", "--seq-len", "16", "--shard", "0/3"],
        USAGE,
        &["shard 0", "no samples"],
    );
}

#[test]
fn merge_refuses_mismatched_files() {
    let b = bad();
    let llama = common::model_dir("tiny-random-llama");
    let demo0 = b.shard("demo0.st", None, 0, &[]);
    let demo1 = b.shard("demo1.st", None, 1, &[]);
    let llama1 = b.shard("llama1.st", Some(&llama), 1, &[]);
    let last1 = b.shard("last1.st", None, 1, &["--target", "last"]);
    let signed1 = b.shard("signed1.st", None, 1, &["--aggregation", "signed"]);
    b.merge(
        &[&demo0, &llama1],
        INPUT,
        &["llama1.st", "different models"],
    );
    b.merge(&[&demo0, &last1], INPUT, &["last1.st", "different targets"]);
    b.merge(
        &[&demo0, &signed1],
        INPUT,
        &["signed1.st", "different aggregations"],
    );
    b.merge(&[&demo0, &demo0], INPUT, &["demo0.st", "shard 0", "twice"]);
    b.merge(
        &[&demo1, &demo0, &demo1],
        INPUT,
        &["demo1.st", "shard 1", "twice"],
    );
    // --out naming one of the files to merge.
    let mut v = vec!["merge".to_string(), demo0.clone(), demo1.clone()];
    v.extend(["--out".into(), demo0.clone(), "--force".into()]);
    b.refuse(&v, USAGE, &["one of the inputs"]);
    // The matching pair does merge (the cases above fail for the reason they name).
    let out = b.out();
    merge(&[Path::new(&demo0), Path::new(&demo1)], &out);
    assert_eq!(listing(&b.out_dir()), vec!["rel.st".to_string()]);
}

#[test]
fn out_is_the_models_weight_file() {
    let sb = Sandbox::with_model("tiny-random-llama");
    let m = sb.model();
    let before = common::snapshot_dir(&m);
    let weights = m.join("model.safetensors");
    let args = attribute_args(
        Some(&m),
        &["--samples", "1", "--seq-len", "16", "--force"],
        &weights,
    );
    let r = run(&args);
    assert_error(&r, USAGE, &["model.safetensors", "one of the inputs"]);
    assert!(
        common::snapshot_dir(&m) == before,
        "the model folder changed (weights overwritten or a temp file left)"
    );
    // The same through another spelling of the path.
    let other = m.join("..").join("model").join("model.safetensors");
    let args = attribute_args(
        Some(&m),
        &["--samples", "1", "--seq-len", "16", "--force"],
        &other,
    );
    assert_error(&run(&args), USAGE, &["one of the inputs"]);
    assert!(
        common::snapshot_dir(&m) == before,
        "the model folder changed"
    );
    // The data file as --out.
    let b = bad();
    let data = p(&common::demo_text(&b.path("in"), "data.txt", 3000));
    let args = attribute_args(
        None,
        &[
            "--data",
            &data,
            "--samples",
            "1",
            "--seq-len",
            "16",
            "--force",
        ],
        Path::new(&data),
    );
    b.refuse(&args, USAGE, &["data.txt", "one of the inputs"]);
}

#[test]
fn out_is_the_models_config_or_tokenizer() {
    let sb = Sandbox::with_model("tiny-random-llama");
    let m = sb.model();
    let before = common::snapshot_dir(&m);
    for f in ["config.json", "tokenizer.json"] {
        let args = attribute_args(
            Some(&m),
            &["--samples", "1", "--seq-len", "16", "--force"],
            &m.join(f),
        );
        let r = run(&args);
        assert_ne!(r.code, Some(0), "--out {f} --force was accepted");
        assert!(common::snapshot_dir(&m) == before, "{f} was overwritten");
    }
}

#[test]
fn existing_out_and_missing_directory() {
    let b = bad();
    let out = b.out();
    std::fs::write(&out, b"keep me").unwrap();
    b.attribute(
        &["--samples", "1", "--seq-len", "16"],
        OUTPUT,
        &["rel.st", "already exists", "--force"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    // merge, too.
    let s0 = b.shard("s0.st", None, 0, &[]);
    let s1 = b.shard("s1.st", None, 1, &[]);
    b.merge(&[&s0, &s1], OUTPUT, &["rel.st", "already exists"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    // With --force the file is replaced by a relevance file.
    run_ok(&attribute_args(
        None,
        &["--samples", "1", "--seq-len", "16", "--force"],
        &out,
    ));
    assert_eq!(read(&out).meta.samples, 1);
    assert_eq!(listing(&b.out_dir()), vec!["rel.st".to_string()]);

    // A directory that does not exist.
    let nowhere = b.out_dir().join("no").join("such").join("rel.st");
    let args = attribute_args(None, &["--samples", "1", "--seq-len", "16"], &nowhere);
    b.refuse(&args, OUTPUT, &["does not exist"]);
    assert!(!b.out_dir().join("no").exists());
    let mut v = vec!["merge".to_string(), s0, s1, "--out".into()];
    v.push(p(&nowhere));
    b.refuse(&v, OUTPUT, &["does not exist"]);
    // --out naming a directory.
    let args = attribute_args(
        None,
        &["--samples", "1", "--seq-len", "16", "--force"],
        &b.out_dir(),
    );
    b.refuse(&args, OUTPUT, &["directory"]);
}

// ---------------------------------------------------------------------------------------------
// 7. The memory plan: block groups.
// ---------------------------------------------------------------------------------------------

/// Accumulating in groups of consecutive blocks (one pass over the data each) writes the file a
/// single pass writes, byte for byte: asked for (`--passes`) and chosen by the plan when the
/// per-weight sums do not fit at once.
#[test]
fn grouped_passes_equal_one_pass_bit_for_bit_on_smollm2() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let m = smollm2();
    let data = common::data("wikitext-2-raw/wiki.test.joined.txt");
    let data = p(&data);
    let base = ["--data", &data, "--samples", "2", "--seq-len", "24"];
    let run_with = |extra: &[&str], env: &[(&str, &str)], name: &str| {
        let out = d.join(name);
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra);
        args.push("--json");
        let r = common::run_bin_env(
            &attribute_args(Some(&m), &args, &out),
            env,
            std::time::Duration::from_secs(300),
        );
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        (common::json_of(&r), std::fs::read(&out).unwrap())
    };
    let (one, single) = run_with(&["--passes", "1"], &[], "one.st");
    assert_eq!(one["plan"]["groups"].as_array().unwrap().len(), 1);
    for passes in ["3", "30"] {
        let (v, bytes) = run_with(&["--passes", passes], &[], &format!("p{passes}.st"));
        assert_eq!(
            v["plan"]["groups"].as_array().unwrap().len().to_string(),
            passes
        );
        assert!(bytes == single, "--passes {passes} differs from one pass");
    }
    // 700 MiB left after loading: the plan splits SmolLM2's 0.4 GiB of sums (512 MiB reserve).
    let env = [("SPARC3_MEMORY_AVAILABLE", "700MiB")];
    let (v, bytes) = run_with(&["--memory", "store"], &env, "auto.st");
    let groups = v["plan"]["groups"].as_array().unwrap().len();
    assert!(groups > 1, "the plan did not split: {}", v["plan"]);
    assert!(
        bytes == single,
        "the plan's {groups} passes differ from one pass"
    );
    assert_eq!(v["memory_mode"], "store");
}

/// When not even one block's sums fit, or the groups asked for are too large, the plan refuses
/// (exit 5) with the flags that would make it fit, and writes nothing.
#[test]
fn plan_refuses_what_cannot_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r.st");
    let m = smollm2();
    let data = p(&common::data("wikitext-2-raw/wiki.test.joined.txt"));
    let args = |extra: &[&str]| {
        let mut a = vec!["--data", data.as_str(), "--samples", "1", "--seq-len", "24"];
        a.extend(extra);
        attribute_args(Some(&m), &a, &out)
    };
    let small = [("SPARC3_MEMORY_AVAILABLE", "520MiB")];
    let r = common::run_bin_env(&args(&[]), &small, std::time::Duration::from_secs(300));
    assert_error(&r, common::RESOURCE, &["MiB", "--seq-len", "--force"]);
    let some = [("SPARC3_MEMORY_AVAILABLE", "700MiB")];
    let r = common::run_bin_env(
        &args(&["--passes", "1"]),
        &some,
        std::time::Duration::from_secs(300),
    );
    assert_error(&r, common::RESOURCE, &["--passes auto", "--force"]);
    assert_eq!(listing(tmp.path()), Vec::<String>::new());
}
