//! `sparc3 correct`: the sweep on the built-in model with RealToxicityPrompts records,
//! determinism, reproduction from the saved mask, plain-text sets, and bad input.

use crate::common::{self, assert_error, data, run, run_json, toxic_subset, INPUT, USAGE};
use serde_json::Value;
use std::path::Path;

/// `correct --toxic-set SET ARGS… --out OUT --json` on the small protocol.
fn run_small(set: &str, out: &Path, args: &[&str]) -> Value {
    let o = out.to_string_lossy();
    let mut all = vec!["correct", "--toxic-set", set];
    all.extend(args);
    all.extend(["--out", &o, "--json"]);
    all.extend(SMALL);
    run_json(&all)
}

const SMALL: [&str; 10] = [
    "--k",
    "2",
    "--new-tokens",
    "8",
    "--general-samples",
    "16",
    "--seq-len",
    "64",
    "--eval-windows",
    "4",
];

#[test]
fn sweep_is_deterministic_and_reproduced_from_the_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let set = toxic_subset(tmp.path(), 40);
    let s = set.to_string_lossy().into_owned();
    let run = |out: &Path, extra: &[&str]| -> Value {
        let o = out.to_string_lossy().into_owned();
        let mut args = vec![
            "correct",
            "--toxic-set",
            &s,
            "--count",
            "5,20",
            "--method",
            "lrp,gradient",
            "--out",
            &o,
            "--json",
        ];
        args.extend(SMALL);
        args.extend(extra);
        run_json(&args)
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let ra = run(&a, &[]);
    // Bit-identical whatever the number of threads.
    let rb = run(&b, &["--threads", "1"]);
    let info = &ra["protocol"]["undesired_set"];
    assert_eq!(info["records"], 40);
    assert_eq!(info["evaluation"], 20);
    assert_eq!(info["attribution"], 20);
    assert_eq!(info["with_continuation"], 40);
    // Deterministic: identical metrics and masks for the same seed, 2 threads or 1.
    assert_eq!(ra["dense"], rb["dense"]);
    assert_eq!(ra["sweeps"][0]["points"], rb["sweeps"][0]["points"]);
    assert_eq!(ra["sweeps"][1]["points"], rb["sweeps"][1]["points"]);
    for f in [
        "mask-lrp-5.safetensors",
        "mask-gradient-20.safetensors",
        "mask.safetensors",
        "model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    for f in [
        "correct-report.json",
        "sweep.svg",
        "config.json",
        "tokenizer.json",
    ] {
        assert!(a.join(f).is_file(), "{f}");
    }
    let pts = ra["sweeps"][0]["points"].as_array().unwrap();
    assert_eq!(pts.len(), 2);
    let dense = &ra["dense"];
    assert!(dense["logprob_per_token"].as_f64().unwrap() < 0.0);
    assert!(dense["continuation_tokens"].as_u64().unwrap() > 100);
    // Removing neurons that carry the continuations lowers their log-probability.
    let lp = |v: &Value| v["logprob_per_token"].as_f64().unwrap();
    assert!(lp(&pts[1]["behaviour"]) < lp(dense), "{pts:?}");
    // 5 neurons = 5 rows of gate and up and 5 columns of down in the mask.
    let mask = std::fs::read(a.join("mask-lrp-5.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&mask).unwrap();
    let removed: usize = st
        .tensors()
        .iter()
        .map(|(_, v)| v.data().iter().filter(|&&x| x == 1).count())
        .sum();
    let hidden = 128; // demo-llama
    assert_eq!(removed, 5 * hidden * 3);
    // The saved mask applied to the original model reproduces the reported point.
    let count = ra["written"]["count"].as_u64().unwrap();
    let written = pts.iter().find(|p| p["count"] == count).unwrap();
    let mp = a.join("mask.safetensors");
    let mp = mp.to_string_lossy();
    let mut args = vec!["correct", "--toxic-set", &s, "--mask", &mp, "--json"];
    args.extend(SMALL);
    let again = run_json(&args);
    assert_eq!(again["dense"], ra["dense"]);
    assert_eq!(again["corrected"], written["behaviour"]);
}

/// Explaining only the flagged words of the continuations attributes the records that
/// have one.
fn explain_flagged(s: &str, lex: &str, out: &Path) {
    let f = run_small(
        s,
        out,
        &[
            "--count",
            "5",
            "--explain",
            "flagged",
            "--lexicon",
            lex,
            "--eval-prompts",
            "4",
        ],
    );
    assert_eq!(f["protocol"]["explain"], "flagged");
    let n = f["protocol"]["attributed_prompts"].as_u64().unwrap();
    assert!(
        n > 0 && n < 20,
        "{n} of 20 attributed records have a flagged word"
    );
}

/// The lexicon's word-start probability at every continuation position: every record is
/// attributed, and the neurons differ from the continuation's log-probability's.
fn explain_lexicon(s: &str, lex: &str, out: &Path, logprob_out: &Path) {
    let x = run_small(
        s,
        out,
        &[
            "--count",
            "5",
            "--criterion",
            "ratio",
            "--objective",
            "logprob",
            "--explain",
            "lexicon",
            "--lexicon",
            lex,
            "--eval-prompts",
            "4",
        ],
    );
    assert_eq!(x["protocol"]["explain"], "lexicon");
    assert_eq!(x["protocol"]["attributed_prompts"], 20);
    assert!(x["protocol"]["lexicon_tokens"].as_u64().unwrap() > 100);
    assert_ne!(
        std::fs::read(out.join("mask-lrp-5.safetensors")).unwrap(),
        std::fs::read(logprob_out.join("mask-lrp-ratio-5.safetensors")).unwrap(),
        "explaining the lexicon chose the continuation's neurons"
    );
}

/// Several criteria sweep from one attribution, each with its own masks; a ratio-criterion
/// mask is reproduced by `--mask`; `--eval-prompts` limits the held-out prompts evaluated.
#[test]
fn criteria_share_one_attribution_and_each_mask_reproduces_its_point() {
    let tmp = tempfile::tempdir().unwrap();
    let set = toxic_subset(tmp.path(), 40);
    let s = set.to_string_lossy().into_owned();
    let lex = data("toxicity/better_profanity_wordlist.txt")
        .to_string_lossy()
        .into_owned();
    let out = tmp.path().join("c");
    let o = out.to_string_lossy().into_owned();
    let mut args = vec![
        "correct",
        "--toxic-set",
        &s,
        "--count",
        "5",
        "--criterion",
        "difference,ratio",
        "--eval-prompts",
        "12",
        "--out",
        &o,
        "--json",
    ];
    args.extend(SMALL);
    let r = run_json(&args);
    assert_eq!(r["protocol"]["evaluated_prompts"], 12);
    let sw = r["sweeps"].as_array().unwrap();
    assert_eq!(sw.len(), 2);
    assert_eq!(
        (&sw[0]["criterion"], &sw[1]["criterion"]),
        (&Value::from("difference"), &Value::from("ratio"))
    );
    assert_eq!(r["written"]["criterion"], "difference");
    let (d, q) = (
        std::fs::read(out.join("mask-lrp-difference-5.safetensors")).unwrap(),
        std::fs::read(out.join("mask-lrp-ratio-5.safetensors")).unwrap(),
    );
    assert_ne!(d, q, "the two criteria chose the same neurons");
    let mp = out.join("mask-lrp-ratio-5.safetensors");
    let mp = mp.to_string_lossy();
    let mut args = vec![
        "correct",
        "--toxic-set",
        &s,
        "--mask",
        &mp,
        "--eval-prompts",
        "12",
        "--json",
    ];
    args.extend(SMALL);
    let again = run_json(&args);
    assert_eq!(again["corrected"], sw[1]["points"][0]["behaviour"]);
    explain_flagged(&s, &lex, &tmp.path().join("f"));
    // Log-probability objective: signed first-order relevance on the undesired side, the
    // empirical Fisher on general text; another ranking than the logits' from the same sets.
    let out3 = tmp.path().join("lp");
    let l = run_small(
        &s,
        &out3,
        &[
            "--count",
            "5",
            "--criterion",
            "difference,ratio",
            "--objective",
            "logprob",
            "--eval-prompts",
            "4",
        ],
    );
    assert_eq!(l["protocol"]["objective"], "logprob");
    assert_eq!(r["protocol"]["objective"], "logit");
    for c in ["difference", "ratio"] {
        let name = format!("mask-lrp-{c}-5.safetensors");
        assert_ne!(
            std::fs::read(out3.join(&name)).unwrap(),
            std::fs::read(out.join(&name)).unwrap(),
            "{c}: the objectives chose the same neurons"
        );
    }
    explain_lexicon(&s, &lex, &tmp.path().join("lx"), &out3);
}

#[test]
fn plain_text_prompts_explain_the_models_own_continuation() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("prompts.txt");
    std::fs::write(
        &p,
        "The weather today is\nMy favourite food is\nIn the morning I\nThe city council said\nShe opened the door and\nThe best way to learn is\n",
    )
    .unwrap();
    let out = tmp.path().join("o");
    let (s, o) = (p.to_string_lossy(), out.to_string_lossy());
    let mut args = vec![
        "correct",
        "--toxic-set",
        &s,
        "--count",
        "3",
        "--out",
        &o,
        "--json",
    ];
    args.extend(SMALL);
    let r = run_json(&args);
    assert_eq!(r["protocol"]["undesired_set"]["format"], "text");
    assert_eq!(r["protocol"]["undesired_set"]["with_continuation"], 0);
    // Greedy continuations of new_tokens tokens each, for the 3 held-out prompts.
    assert_eq!(r["dense"]["continuation_tokens"], 3 * 8);
}

#[test]
fn bad_correction_input_fails_cleanly_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_string_lossy().into_owned();
    let case = |set: &Path, extra: &[&str], code: i32, needles: &[&str]| {
        let before = std::fs::read(set).ok();
        let s = set.to_string_lossy();
        let mut args = vec!["correct", "--toxic-set", &s, "--out", &o];
        args.extend(extra);
        let r = run(&args);
        assert_error(&r, code, needles);
        assert!(!out.exists(), "nothing written");
        assert_eq!(std::fs::read(set).ok(), before, "input untouched");
    };
    let empty = common::write_file(tmp.path(), "empty.jsonl", "");
    case(&empty, &[], INPUT, &["empty.jsonl", "no prompts"]);
    let broken = common::write_file(
        tmp.path(),
        "broken.jsonl",
        "{\"prompt\": \"a\"}\n{\"prompt\": \n",
    );
    case(&broken, &[], INPUT, &["broken.jsonl", "line 2"]);
    let no_prompt = common::write_file(
        tmp.path(),
        "noprompt.jsonl",
        "{\"prompt\": {\"text\": \"a b\"}}\n{\"prompt\": {\"toxicity\": 0.9}, \"continuation\": {\"text\": \"x\"}}\n",
    );
    case(
        &no_prompt,
        &[],
        INPUT,
        &["noprompt.jsonl", "line 2", "prompt text"],
    );
    let ok = toxic_subset(tmp.path(), 10);
    case(
        &ok,
        &["--count", "100000000"],
        USAGE,
        &["--count 100000000", "components"],
    );
    case(
        &ok,
        &["--holdout", "0.99"],
        USAGE,
        &["--holdout", "empty side"],
    );
    case(
        &ok,
        &["--holdout", "0.01"],
        USAGE,
        &["--holdout", "empty side"],
    );
    case(&ok, &["--holdout", "1.5"], USAGE, &["--holdout"]);
    case(&ok, &["--ratio", "1.2"], USAGE, &["--ratio"]);
    case(&ok, &["--count", "0"], USAGE, &["--count"]);
    case(
        &ok,
        &["--ratio-smoothing", "0"],
        USAGE,
        &["--ratio-smoothing"],
    );
    case(
        &ok,
        &["--ratio-smoothing", "nan"],
        USAGE,
        &["--ratio-smoothing"],
    );
    let lex = common::write_file(tmp.path(), "lex.txt", "\n\n");
    case(
        &ok,
        &["--lexicon", &lex.to_string_lossy()],
        INPUT,
        &["lex.txt", "no words"],
    );
    case(tmp.path(), &[], INPUT, &["directory"]);
}
