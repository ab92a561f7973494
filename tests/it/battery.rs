//! The bad-input battery: every subcommand against every kind of damaged model, damaged data
//! file and unwritable output. Each case must exit with a documented failure code (never 0,
//! never a panic's 101), print exactly one `error:` line on stderr naming the problem and nothing
//! on stdout, leave no output or temporary file behind, and leave every input byte-identical.
//! (Unreadable-permission cases are not here: the test user may be root, which reads anything.)

use crate::common::{self, error_line, run, Run, Sandbox};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A sandbox: `model/` (a copy of tiny-random-llama), `text.txt`, `task.jsonl`, `toxic.jsonl`.
fn sandbox() -> Sandbox {
    let sb = Sandbox::with_model("tiny-random-llama");
    common::demo_text(sb.root(), "text.txt", 6000);
    let task: String = (0..8)
        .map(|i| {
            // One-token words of this 512-token vocabulary.
            format!("{{\"prompt\":\"The cat and the dog {i}: it went to\",\"target\":\" the\",\"foil\":\" a\"}}\n")
        })
        .collect();
    common::write_file(sb.root(), "task.jsonl", &task);
    common::toxic_subset(sb.root(), 8);
    sb
}

/// Every subcommand with valid small arguments; `model`, `data` and `out` are substituted.
/// `data` is the command's main data file (text, calibration, task, undesired set).
fn commands() -> Vec<(&'static str, Vec<&'static str>)> {
    [
        (
            "eval",
            "eval --model {model} --text {data} --seq-len 32 --max-windows 2",
        ),
        ("info", "info --model {model}"),
        (
            "attribute",
            "attribute --model {model} --data {data} --samples 2 --seq-len 32 --out {out}",
        ),
        (
            "compress",
            "compress --model {model} --calib {data} --samples 2 --seq-len 32 --out {out}",
        ),
        (
            "sweep",
            concat!(
                "sweep --model {model} --methods lrp,magnitude --ratios 0.5 --calib {data} ",
                "--samples 2 --seq-len 32 --eval {text} --eval-windows 1 --eval-seq-len 32 ",
                "--out {out}",
            ),
        ),
        (
            "circuit",
            "circuit --model {model} --task {data} --samples 4 --eval-samples 4 --out {out}",
        ),
        (
            "correct",
            concat!(
                "correct --model {model} --toxic-set {data} --general-set {text} ",
                "--general-samples 2 --seq-len 32 --count 1 --k 1 --new-tokens 2 ",
                "--eval {text} --eval-windows 1 --eval-seq-len 32 --out {out}",
            ),
        ),
    ]
    .into_iter()
    .map(|(name, args)| (name, args.split_whitespace().collect()))
    .collect()
}

fn default_data(cmd: &str) -> &'static str {
    match cmd {
        "circuit" => "task.jsonl",
        "correct" => "toxic.jsonl",
        _ => "text.txt",
    }
}

fn has_out(args: &[&str]) -> bool {
    args.contains(&"{out}")
}

/// Run `cmd` in `sb` with substitutions.
fn run_cmd(sb: &Sandbox, args: &[&str], model: &str, data: &str, out: &str) -> Run {
    let text = sb.s("text.txt");
    let a: Vec<String> = args
        .iter()
        .map(|a| match *a {
            "{model}" => model.to_string(),
            "{data}" => data.to_string(),
            "{out}" => out.to_string(),
            "{text}" => text.clone(),
            other => other.to_string(),
        })
        .collect();
    run(&a)
}

/// Run `cmd` in `sb` on the sandbox's model and the command's own data file, writing to `out`.
fn run_to(sb: &Sandbox, cmd: &str, args: &[&str], out: &str) -> Run {
    run_cmd(sb, args, &model_of(sb), &sb.s(default_data(cmd)), out)
}

/// The failure contract, for one case.
fn assert_clean_failure(what: &str, r: &Run, needles: &[&str]) {
    assert!(
        matches!(r.code, Some(2..=5)),
        "{what}: exit {:?} (want a documented failure code 2–5); stderr: {}",
        r.code,
        r.stderr
    );
    let line = error_line(what, r, needles);
    println!("{what}: exit {:?}: {line}", r.code);
}

/// Run every subcommand (or those that read a data file when `data_case`) against a damage made
/// by `damage` in a fresh sandbox; check the contract. Returns the number of cases run.
fn battery(
    label: &str,
    damage: impl Fn(&Sandbox) -> (String, Option<String>),
    needles: &dyn Fn(&Sandbox) -> Vec<String>,
    only: &[&str],
) -> usize {
    let mut n = 0;
    for (cmd, args) in commands() {
        if !only.is_empty() && !only.contains(&cmd) {
            continue;
        }
        let sb = sandbox();
        let (model, data) = damage(&sb);
        let data = data.unwrap_or_else(|| sb.s(default_data(cmd)));
        let out = sb.s("out");
        let before = sb.tree();
        let r = run_cmd(&sb, &args, &model, &data, &out);
        let nd = needles(&sb);
        let nd: Vec<&str> = nd.iter().map(String::as_str).collect();
        assert_clean_failure(&format!("{label} / {cmd}"), &r, &nd);
        assert_eq!(sb.tree(), before, "{label} / {cmd}: the sandbox changed");
        assert!(
            !sb.path("out").exists(),
            "{label} / {cmd}: output left behind"
        );
        n += 1;
    }
    n
}

fn model_of(sb: &Sandbox) -> String {
    sb.s("model")
}

fn edit_config(sb: &Sandbox, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    common::edit_config(&sb.path("model/config.json"), f);
}

/// Split a safetensors file into (header JSON text, data).
fn st_parts(p: &Path) -> (String, Vec<u8>) {
    let b = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (
        String::from_utf8(b[8..8 + n].to_vec()).unwrap(),
        b[8 + n..].to_vec(),
    )
}

fn st_write(p: &Path, header: &str, data: &[u8]) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(p, b).unwrap();
}

/// The first tensor (by name order) of the model's header, with its entry.
fn first_tensor(header: &str) -> (String, serde_json::Value) {
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(header).unwrap();
    v.into_iter().find(|(k, _)| k != "__metadata__").unwrap()
}

/// The baseline of every case: the undamaged sandbox runs every subcommand.
#[test]
fn intact_sandbox_runs_every_subcommand() {
    for (cmd, args) in commands() {
        let sb = sandbox();
        let r = run_to(&sb, cmd, &args, &sb.s("out"));
        assert_eq!(r.code, Some(0), "{cmd}: {}", r.stderr);
        assert_eq!(has_out(&args), sb.path("out").exists(), "{cmd}");
    }
}

fn weights(sb: &Sandbox) -> PathBuf {
    sb.path("model/model.safetensors")
}

/// A NaN in the weights of model.layers.1.mlp.up_proj.
fn nan_in_up_proj(sb: &Sandbox) -> Option<String> {
    let p = weights(sb);
    let mut t: HashMap<String, Tensor> = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let w = &t[name];
    let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[3] = f32::NAN;
    let nw = Tensor::from_vec(v, w.dims(), &Device::Cpu).unwrap();
    t.insert(name.into(), nw);
    candle_core::safetensors::save(&t, &p).unwrap();
    None
}

/// The header says the first tensor's data ends 8 bytes later than it does.
fn lying_offsets(sb: &Sandbox) -> Option<String> {
    let p = weights(sb);
    let (h, d) = st_parts(&p);
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&h).unwrap();
    let (name, _) = first_tensor(&h);
    let off = v[&name]["data_offsets"][1].as_u64().unwrap();
    v.get_mut(&name).unwrap()["data_offsets"][1] = (off + 8).into();
    st_write(&p, &serde_json::to_string(&v).unwrap(), &d);
    None
}

/// A damage to the sandbox's model; it returns the --model to use when that is not the
/// sandbox's model directory.
type Damage = Box<dyn Fn(&Sandbox) -> Option<String>>;

/// The damaged models: (label, a word the error must name, the damage).
fn model_damages() -> Vec<(String, &'static str, Damage)> {
    let config = |key: &'static str, val: serde_json::Value| -> (String, &'static str, Damage) {
        (
            format!("config {key} = {val}"),
            key,
            Box::new(move |sb: &Sandbox| {
                edit_config(sb, |c| {
                    c.insert(key.into(), val.clone());
                });
                None
            }),
        )
    };
    vec![
        (
            "missing config.json".into(),
            "config.json",
            Box::new(|sb: &Sandbox| {
                std::fs::remove_file(sb.path("model/config.json")).unwrap();
                None
            }),
        ),
        config("hidden_size", serde_json::json!(0)),
        config("num_hidden_layers", serde_json::json!(-2)),
        config("intermediate_size", serde_json::json!("NaN")),
        config("vocab_size", serde_json::json!(1e300)),
        (
            "weights with NaN".into(),
            "model.layers.1.mlp.up_proj",
            Box::new(nan_in_up_proj),
        ),
        (
            "header lies about offsets".into(),
            "model.safetensors",
            Box::new(lying_offsets),
        ),
        (
            "absurd header length".into(),
            "model.safetensors",
            Box::new(|sb: &Sandbox| {
                let p = weights(sb);
                let mut b = std::fs::read(&p).unwrap();
                b[..8].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
                std::fs::write(&p, b).unwrap();
                None
            }),
        ),
        (
            "duplicate tensor names".into(),
            "twice",
            Box::new(|sb: &Sandbox| {
                let p = weights(sb);
                let (h, d) = st_parts(&p);
                let (name, entry) = first_tensor(&h);
                st_write(&p, &format!("{{\"{name}\":{},{}", entry, &h[1..]), &d);
                None
            }),
        ),
        (
            "config.json is a directory".into(),
            "config.json",
            Box::new(|sb: &Sandbox| {
                std::fs::remove_file(sb.path("model/config.json")).unwrap();
                std::fs::create_dir(sb.path("model/config.json")).unwrap();
                None
            }),
        ),
        (
            "model is a symlink loop".into(),
            "loop",
            Box::new(|sb: &Sandbox| {
                std::os::unix::fs::symlink(sb.path("loop"), sb.path("loop")).unwrap();
                Some(sb.s("loop"))
            }),
        ),
        (
            "model is a plain file, not a model".into(),
            "text.txt",
            Box::new(|sb: &Sandbox| Some(sb.s("text.txt"))),
        ),
    ]
}

#[test]
fn damaged_models_fail_cleanly_in_every_subcommand() {
    let damages = model_damages();
    let mut cases = 0;
    for (label, needle, damage) in &damages {
        cases += battery(
            label,
            |sb| (damage(sb).unwrap_or_else(|| model_of(sb)), None),
            &|_: &Sandbox| vec![needle.to_string()],
            &[],
        );
    }
    println!("damaged-model cases: {cases}");
    assert_eq!(cases, 7 * 12);
}

#[test]
fn damaged_data_files_fail_cleanly_in_every_subcommand_that_reads_one() {
    let readers = [
        "eval",
        "attribute",
        "compress",
        "sweep",
        "circuit",
        "correct",
    ];
    let mut cases = 0;
    // (label, file name, how it is made; `None`: it does not exist).
    type Make = fn(&Sandbox, &Path);
    let damages: [(&str, &str, Option<Make>); 6] = [
        ("data file missing", "nope.txt", None),
        (
            "data file is a directory",
            "dir",
            Some(|_, p| std::fs::create_dir(p).unwrap()),
        ),
        (
            "data is not UTF-8",
            "bad.txt",
            Some(|_, p| std::fs::write(p, b"text \xff\xfe with invalid bytes\n").unwrap()),
        ),
        (
            "JSONL with a broken line",
            "broken.jsonl",
            Some(|sb, p| {
                let good = std::fs::read_to_string(sb.path("toxic.jsonl")).unwrap();
                let mut lines: Vec<String> = good.lines().take(3).map(str::to_string).collect();
                lines.push("{\"prompt\": \"unterminated".into());
                std::fs::write(p, lines.join("\n") + "\n").unwrap();
            }),
        ),
        (
            "data is a symlink loop",
            "dloop",
            Some(|_, p| std::os::unix::fs::symlink(p, p).unwrap()),
        ),
        (
            "data file is empty",
            "empty.txt",
            Some(|_, p| std::fs::write(p, b"").unwrap()),
        ),
    ];
    for (label, name, make) in damages {
        cases += battery(
            label,
            |sb| {
                if let Some(f) = make {
                    f(sb, &sb.path(name));
                }
                (model_of(sb), Some(sb.s(name)))
            },
            &|sb: &Sandbox| {
                let mut v = vec![sb.s(name)];
                if name == "broken.jsonl" {
                    v.push("line 4".into());
                }
                v
            },
            &readers,
        );
    }
    println!("damaged-data cases: {cases}");
    assert_eq!(cases, 6 * 6);
}

#[test]
fn unwritable_or_occupied_outputs_fail_cleanly_in_every_subcommand_that_writes() {
    let mut cases = 0;
    for (cmd, args) in commands() {
        if !has_out(&args) {
            continue;
        }
        // A read-only file system (even root cannot create files in /proc), and a parent
        // directory that does not exist.
        for (what, out) in [
            ("read-only output", "/proc/sparc3-battery-out"),
            ("missing parent", "/nonexistent-sparc3/out"),
        ] {
            let sb = sandbox();
            let before = sb.tree();
            let r = run_to(&sb, cmd, &args, out);
            let parent = Path::new(out)
                .parent()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert_clean_failure(&format!("{what} / {cmd}"), &r, &[&parent]);
            assert_eq!(sb.tree(), before);
            assert!(!Path::new(out).exists());
            cases += 1;
        }
        // An existing output without --force is refused and left as it was.
        let sb = sandbox();
        std::fs::write(sb.path("out"), b"precious").unwrap();
        let before = sb.tree();
        let r = run_to(&sb, cmd, &args, &sb.s("out"));
        assert_clean_failure(&format!("existing output / {cmd}"), &r, &["--force"]);
        assert_eq!(sb.tree(), before);
        cases += 1;
        // The output is the model directory itself, even with --force.
        let sb = sandbox();
        let before = sb.tree();
        let mut a = args.clone();
        a.push("--force");
        let r = run_to(&sb, cmd, &a, &sb.s("model"));
        assert_clean_failure(&format!("output = model / {cmd}"), &r, &[]);
        assert_eq!(sb.tree(), before);
        cases += 1;
    }
    println!("output cases: {cases}");
    assert_eq!(cases, 5 * 4);
}
