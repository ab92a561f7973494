//! `sparc3 eval --json` against the perplexities measured with transformers (REFERENCE.json in
//! each shared model folder).

use crate::common;

const REL_TOL: f64 = 1e-3;

fn reference(model: &str) -> serde_json::Value {
    common::read_json(&common::model_dir(model).join("REFERENCE.json"))
}

fn num(v: &serde_json::Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("REFERENCE.json has no number at {path}"))
}

/// Run `sparc3 eval --json` and return the parsed result.
fn eval(model: &str, text: &str, seq_len: usize, max_windows: Option<usize>) -> serde_json::Value {
    let s = seq_len.to_string();
    let mut args = vec![
        "eval",
        "--json",
        "--model",
        model,
        "--text",
        text,
        "--seq-len",
        &s,
    ];
    let mw = max_windows.map(|m| m.to_string());
    if let Some(m) = &mw {
        args.extend(["--max-windows", m]);
    }
    let v = common::run_json(&args);
    assert_eq!(v["seq_len"], seq_len);
    v
}

fn compare(
    label: &str,
    got: &serde_json::Value,
    want_ppl: f64,
    want_tokens: u64,
    want_windows: u64,
) {
    let ppl = got["ppl"].as_f64().expect("ppl");
    let rel = (ppl - want_ppl).abs() / want_ppl;
    println!(
        "{label}: ppl {ppl:.4} vs reference {want_ppl:.4} (rel. diff {rel:.2e}), tokens {} (ref {want_tokens}), windows {} (ref {want_windows})",
        got["tokens"], got["windows"]
    );
    assert_eq!(
        got["tokens"].as_u64(),
        Some(want_tokens),
        "{label}: token count"
    );
    assert_eq!(
        got["windows"].as_u64(),
        Some(want_windows),
        "{label}: windows"
    );
    assert!(
        rel <= REL_TOL,
        "{label}: ppl {ppl} differs from {want_ppl} by {:.3}%",
        rel * 100.0
    );
    let mean_nll = got["mean_nll"].as_f64().unwrap();
    assert!(
        (mean_nll.exp() - ppl).abs() <= 1e-9 * ppl,
        "{label}: ppl != exp(mean_nll)"
    );
}

/// Compare the first per-window mean NLLs with the reference list (as many as it holds).
fn per_window(label: &str, got: &serde_json::Value, reference: &serde_json::Value, tol: f64) {
    let ours = got["per_window_nll"].as_array().expect("per_window_nll");
    let theirs = reference.as_array().expect("reference per-window list");
    let n = theirs.len().min(ours.len());
    assert!(n >= 16, "{label}: only {n} per-window values to compare");
    let worst = ours[..n]
        .iter()
        .zip(&theirs[..n])
        .map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
        .fold(0.0f64, f64::max);
    println!("{label}: worst per-window NLL difference over {n} windows {worst:.2e}");
    assert!(worst <= tol, "{label}: per-window NLL differs by {worst}");
}

fn wikitext(model: &str) {
    let r = reference(model);
    let dir = common::model_dir(model);
    let text = common::data("wikitext-2-raw/wiki.test.joined.txt");
    let got = eval(
        &dir.to_string_lossy(),
        &text.to_string_lossy(),
        256,
        Some(64),
    );
    compare(
        &format!("{model} WikiText-2 test, 64 windows of 256"),
        &got,
        num(&r, "wikitext2_test_ppl.ppl"),
        num(&r, "wikitext2_test_ppl.tokens") as u64,
        num(&r, "wikitext2_test_ppl.windows_used") as u64,
    );
    assert_eq!(
        got["available_windows"].as_u64(),
        Some(num(&r, "wikitext2_test_ppl.windows_available") as u64)
    );
    // Per-window values agree too (a ppl match by compensating errors would not).
    per_window(
        model,
        &got,
        &r["wikitext2_test_ppl"]["per_window_mean_nll"],
        1e-3,
    );
}

fn valid(model: &str) {
    let r = reference(model);
    let dir = common::model_dir(model);
    let text = common::data("demo-corpus/valid.txt");
    let got = eval(&dir.to_string_lossy(), &text.to_string_lossy(), 256, None);
    compare(
        &format!("{model} demo-corpus valid.txt, all windows of 256"),
        &got,
        num(&r, "valid_ppl.ppl"),
        num(&r, "valid_ppl.tokens") as u64,
        num(&r, "valid_ppl.windows_used") as u64,
    );
    per_window(model, &got, &r["valid_first16_per_window_mean_nll"], 1e-3);
}

#[test]
fn demo_llama_wikitext() {
    wikitext("demo-llama");
}

#[test]
fn demo_opt_wikitext() {
    wikitext("demo-opt");
}

#[test]
fn demo_llama_valid() {
    valid("demo-llama");
}

#[test]
fn demo_opt_valid() {
    valid("demo-opt");
}

#[test]
fn smollm2_gguf_wikitext_16_windows() {
    let r = reference("smollm2-135m");
    let gguf = common::smollm2();
    let text = common::data("wikitext-2-raw/wiki.test.joined.txt");
    let got = eval(
        &gguf.to_string_lossy(),
        &text.to_string_lossy(),
        512,
        Some(16),
    );
    let want = num(&r, "wikitext2_ppl.windows_16.ppl");
    assert!(
        (want - 36.635).abs() < 1e-3,
        "REFERENCE.json changed: {want}"
    );
    compare(
        "SmolLM2-135M Q4_1 WikiText-2 test, 16 windows of 512",
        &got,
        want,
        304_978,
        16,
    );
    assert_eq!(num(&r, "wikitext2_test_tokens") as u64, 304_978);
    assert_eq!(got["available_windows"].as_u64(), Some(595));
    per_window(
        "SmolLM2",
        &got,
        &r["wikitext2_ppl"]["per_window_mean_nll"],
        2e-3,
    );
}
