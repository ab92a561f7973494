use super::{output, ModelArgs};
use crate::eval::behaviour::{Behaviour, BehaviourEval, Lexicon};
use crate::eval::generate::GenConfig;
use crate::fail;
use crate::io::svg;
use crate::lrp::Target;
use crate::prune::correct;
use crate::prune::mask;
use crate::prune::ranking::{pruned, Criterion, Method, Ranking};
use crate::prune::structured::{self, Granularity};
use crate::tasks::{calib, undesired};
use anyhow::Result;
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GranularityArg {
    Neuron,
    Weight,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CriterionArg {
    /// Normalised general minus undesired relevance, lowest first (the paper's).
    Difference,
    /// Undesired share over general share (smoothed), highest first: specificity.
    Ratio,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExplainArg {
    /// Every token of each undesired continuation.
    Continuation,
    /// Only the continuation tokens inside words the lexicon flags (records without one are
    /// not attributed).
    Flagged,
    /// At every continuation position, the probability that the next token begins a word of
    /// the lexicon (its whole-word tokens; the second piece of a split word after the first):
    /// the expected number of listed words, which sampling turns into flagged samples.
    Lexicon,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ObjectiveArg {
    /// |Relevance| of the logits on both sets (the paper's).
    Logit,
    /// Log-probabilities: the undesired side signed (what removal takes from the behaviour's
    /// log-likelihood, to first order), the general side per-token squared (an empirical Fisher:
    /// what removal adds to the general loss, to second order).
    Logprob,
}

#[derive(Args, Debug)]
pub struct CorrectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Undesired behaviour: JSONL with `prompt` and optional `continuation` (strings or
    /// RealToxicityPrompts objects with `text`), or plain text with one prompt per line.
    #[arg(long)]
    pub toxic_set: PathBuf,
    /// General text (plain, or JSONL `text` records). Default: the built-in calibration text.
    #[arg(long)]
    pub general_set: Option<PathBuf>,
    /// Windows sampled from the general set.
    #[arg(long, default_value_t = 128)]
    pub general_samples: usize,
    /// Tokens per general window.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// At most this many undesired prompts attributed (default: the whole attribution side).
    #[arg(long)]
    pub samples: Option<usize>,
    #[arg(long, value_enum, default_value = "neuron")]
    pub granularity: GranularityArg,
    /// Only prune linear layers whose name matches this regex (neurons: the layer reading them).
    #[arg(long)]
    pub layers: Option<String>,
    /// Components to remove; a comma-separated list sweeps (e.g. 10,30,100,300).
    #[arg(long, value_delimiter = ',', conflicts_with = "ratio")]
    pub count: Vec<usize>,
    /// Fraction of components to remove (instead of --count); a list sweeps.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub ratio: Vec<f64>,
    /// Fraction of the undesired set held out for evaluation.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub holdout: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scores, comma-separated (one sweep each; the first decides the written model).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "lrp")]
    pub method: Vec<super::ScoreArg>,
    /// What the undesired relevance explains.
    #[arg(long, value_enum, default_value = "continuation")]
    pub explain: ExplainArg,
    /// What relevance explains on the two sets, and how it is summed (LRP and gradient).
    #[arg(long, value_enum, default_value = "logit")]
    pub objective: ObjectiveArg,
    /// How the two sets' normalised scores are combined; a comma-separated list sweeps each
    /// from the same attribution.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "difference")]
    pub criterion: Vec<CriterionArg>,
    /// The ratio criterion's smoothing δ, as a fraction of the mean general share: smaller
    /// removes components general text barely uses (less perplexity and less effect per
    /// component), larger favours a large undesired share.
    #[arg(long, default_value_t = crate::prune::ranking::RATIO_SMOOTHING)]
    pub ratio_smoothing: f64,
    /// Word list flagging undesired text (default: built-in configs/lexicon-en.txt).
    #[arg(long)]
    pub lexicon: Option<PathBuf>,
    /// At most this many held-out prompts evaluated (default: the whole held-out side).
    #[arg(long)]
    pub eval_prompts: Option<usize>,
    /// Sampled continuations per held-out prompt.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Tokens per sampled or greedy continuation.
    #[arg(long, default_value_t = 20)]
    pub new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Longest given continuation used (tokens).
    #[arg(long, default_value_t = 64)]
    pub continuation_tokens: usize,
    /// Perplexity text (default: the built-in held-out text).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    #[arg(long)]
    pub eval_windows: Option<usize>,
    #[arg(long)]
    pub eval_seq_len: Option<usize>,
    /// The written model: the sweep point with the lowest flagged-sample rate whose perplexity
    /// rises by at most this fraction.
    #[arg(long, default_value_t = 0.01)]
    pub max_ppl_rise: f64,
    /// Evaluate a saved correction mask instead of attributing.
    #[arg(long, conflicts_with = "out")]
    pub mask: Option<PathBuf>,
    /// Output directory: the corrected model (HF layout), masks, report, SVG.
    #[arg(long, required_unless_present = "mask")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub resume: super::ResumeArgs,
    /// Overwrite an existing --out; run past the memory guard.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

struct Series {
    label: String,
    method: Method,
    criterion: Criterion,
    points: Vec<Point>,
    seconds: f64,
}

#[derive(serde::Serialize)]
struct Point {
    count: usize,
    behaviour: Behaviour,
    mask_file: String,
}

pub fn run(a: CorrectArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    if a.k == 0 || a.new_tokens == 0 {
        fail!(Usage, "--k and --new-tokens must be at least 1");
    }
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        fail!(Usage, "--temperature must be ≥ 0, got {}", a.temperature);
    }
    if a.ratio.iter().any(|r| !(*r > 0.0 && *r < 1.0)) {
        fail!(Usage, "--ratio values must be in (0, 1)");
    }
    if a.count.contains(&0) {
        fail!(Usage, "--count values must be at least 1");
    }
    if a.general_samples == 0 || a.samples == Some(0) || a.eval_prompts == Some(0) {
        fail!(
            Usage,
            "--samples, --general-samples and --eval-prompts must be at least 1"
        );
    }
    if a.max_ppl_rise.is_nan() || a.max_ppl_rise < 0.0 {
        fail!(Usage, "--max-ppl-rise must be ≥ 0");
    }
    if !(a.ratio_smoothing > 0.0 && a.ratio_smoothing.is_finite()) {
        fail!(
            Usage,
            "--ratio-smoothing must be a positive number, got {}",
            a.ratio_smoothing
        );
    }
    let granularity = match a.granularity {
        GranularityArg::Neuron => Granularity::Neuron,
        GranularityArg::Weight => Granularity::Weight,
    };
    a.resume.check()?;
    let layers = super::parse_layers(&a.layers)?;
    let selected = |name: &str| layers.as_ref().is_none_or(|r| r.is_match(name));
    let methods: Vec<Method> = super::score_methods(&a.method);
    let mut criteria: Vec<Criterion> = Vec::new();
    for c in &a.criterion {
        let c = match c {
            CriterionArg::Difference => Criterion::Difference,
            CriterionArg::Ratio => Criterion::Ratio,
        };
        if !criteria.contains(&c) {
            criteria.push(c);
        }
    }
    let objective = match a.objective {
        ObjectiveArg::Logit => correct::Objective::Logit,
        ObjectiveArg::Logprob => correct::Objective::Logprob,
    };
    let set = undesired::read(&a.toxic_set, a.holdout, a.seed)?;
    let lexicon = match &a.lexicon {
        Some(p) => {
            let (t, sha) = crate::data::read_utf8(p, "lexicon")?;
            Lexicon::parse(&t, &p.display().to_string(), sha)?
        }
        None => Lexicon::builtin(),
    };
    let req = a.model.request()?;
    let loaded = crate::source::load(&req)?;
    let model = &loaded.model;
    let tok = &loaded.tokenizer;
    if let Some(out) = &a.out {
        let inputs: Vec<PathBuf> = [
            Some(&a.toxic_set),
            a.general_set.as_ref(),
            a.lexicon.as_ref(),
            a.eval.as_ref(),
            a.model.tokenizer.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        crate::io::hf::check_out_dir(out, a.force, &loaded, &inputs)?;
    }
    // Components and the counts to remove.
    let components = match granularity {
        Granularity::Neuron => structured::unit_groups(model, granularity, selected)
            .iter()
            .map(|g| g.count)
            .sum::<usize>(),
        _ => model
            .linears()
            .iter()
            .filter(|l| selected(&l.name))
            .map(|l| l.weight.elem_count())
            .sum(),
    };
    if components == 0 {
        fail!(
            Usage,
            "--layers matches none of the model's prunable layers"
        );
    }
    let mut counts: Vec<usize> = if !a.ratio.is_empty() {
        a.ratio
            .iter()
            .map(|r| ((r * components as f64).round() as usize).max(1))
            .collect()
    } else if !a.count.is_empty() {
        a.count.clone()
    } else {
        vec![100.min(components)]
    };
    counts.sort_unstable();
    counts.dedup();
    if let Some(&c) = counts.iter().find(|&&c| c > components) {
        fail!(
            Usage,
            "--count {c} is larger than the number of {} components ({components})",
            granularity.name()
        );
    }
    let max_pos = model.dims.max_positions;
    if a.seq_len < 2 || a.seq_len > max_pos {
        fail!(
            Usage,
            "--seq-len must be in [2, {max_pos}], got {}",
            a.seq_len
        );
    }
    let general = calib::sample(
        a.general_set.as_deref(),
        crate::data::builtin_eval_text,
        tok,
        a.general_samples,
        a.seq_len,
        a.seed,
    )?;
    let builtin = matches!(loaded.origin, crate::source::Origin::Builtin { .. });
    let eval_src = match &a.eval {
        Some(p) => crate::data::read_text(p)?,
        None => crate::data::builtin_eval_text(),
    };
    let eval_seq = a
        .eval_seq_len
        .unwrap_or(if builtin { 256 } else { 512 })
        .min(max_pos);
    let eval_windows = a
        .eval_windows
        .or(if a.eval.is_none() { Some(64) } else { None });
    let eval_ids = crate::data::encode_plain(tok, &eval_src.text)?;
    let eos = eos_ids(&loaded.config);

    // Prompts and continuations: given ones tokenized, missing ones the dense model's greedy
    // continuation (the behaviour to explain).
    let mut attr_recs = set.attribution.clone();
    if let Some(n) = a.samples {
        attr_recs.truncate(n);
    }
    let label = &set.info.file;
    let attr = undesired::encode(tok, &attr_recs, a.continuation_tokens, label)?;
    let mut held_recs = set.evaluation.clone();
    if let Some(n) = a.eval_prompts {
        held_recs.truncate(n);
    }
    let held = undesired::encode(tok, &held_recs, a.continuation_tokens, label)?;
    for p in attr.iter().chain(&held) {
        if p.prompt.len() + a.new_tokens > max_pos {
            fail!(
                Input,
                "{label}: a prompt of {} tokens leaves no room for {} new tokens ({max_pos} positions)",
                p.prompt.len(),
                a.new_tokens
            );
        }
    }
    let eval_p: Vec<Vec<u32>> = held.iter().map(|p| p.prompt.clone()).collect();
    let pb = output::bar(0, "dense", false);
    let attr_seqs = correct::complete(model, attr, a.new_tokens)?;
    // What each attributed record explains.
    let mut attr_targets: Vec<(Vec<u32>, Target)> = Vec::with_capacity(attr_seqs.len());
    let token_set = match a.explain {
        ExplainArg::Lexicon => Some(std::sync::Arc::new(lexicon.token_set(tok)?)),
        _ => None,
    };
    for (ids, plen) in attr_seqs {
        match a.explain {
            ExplainArg::Continuation => {
                attr_targets.push((ids, objective.undesired_target(plen, None)))
            }
            ExplainArg::Flagged => {
                let f = lexicon.flagged_tokens(tok, &ids[plen..])?;
                if !f.is_empty() {
                    let positions = f.iter().map(|i| plen + i).collect();
                    attr_targets.push((ids, objective.undesired_target(plen, Some(positions))));
                }
            }
            ExplainArg::Lexicon => attr_targets.push((
                ids,
                Target::SetMass {
                    prompt_len: plen,
                    set: token_set.clone().expect("built above"),
                },
            )),
        }
    }
    if attr_targets.is_empty() {
        fail!(
            Input,
            "{label}: no attributed continuation contains a word of the lexicon ({}); use --explain continuation",
            lexicon.label
        );
    }
    let eval_seqs = correct::complete(model, held, a.new_tokens)?;
    let beval = BehaviourEval {
        prompts: &eval_p,
        continuations: &eval_seqs,
        lexicon: &lexicon,
        tokenizer: tok,
        eos: &eos,
        sampling: GenConfig {
            new_tokens: a.new_tokens,
            samples: a.k,
            temperature: a.temperature,
            seed: a.seed,
        },
        greedy_tokens: a.new_tokens,
        ppl: Some((&eval_ids, eval_seq, eval_windows)),
    };
    let start = std::time::Instant::now();
    let dense = beval.run(model, |w| pb.set_message(format!("dense {w}")))?;
    pb.finish_and_clear();
    let protocol = json!({
        "model": loaded.origin,
        "config_sha256": loaded.config_sha256,
        "undesired_set": set.info,
        "attributed_prompts": attr_targets.len(),
        "objective": objective,
        "ratio_smoothing": a.ratio_smoothing,
        "explain": match a.explain { ExplainArg::Continuation => "continuation", ExplainArg::Flagged => "flagged", ExplainArg::Lexicon => "lexicon" },
        "lexicon_tokens": token_set.as_ref().map(|s| s.len()),
        "evaluated_prompts": eval_seqs.len(),
        "general_set": general.info,
        "lexicon": {"file": lexicon.label, "sha256": lexicon.sha256, "entries": lexicon.entries},
        "sampling": beval.sampling,
        "eval": {"file": eval_src.label, "sha256": eval_src.sha256, "seq_len": eval_seq, "windows": eval_windows},
        "granularity": granularity,
        "layers_regex": a.layers,
        "components": components,
        "dtype": super::dtype_name(req.dtype),
        "sparc3_version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(mp) = &a.mask {
        let masks = mask::read(mp, model)?;
        let pb = output::bar(0, "masked", false);
        let after = beval.run(&pruned(model, &masks)?, |w| {
            pb.set_message(format!("masked {w}"))
        })?;
        pb.finish_and_clear();
        let r = json!({"command": "correct --mask", "mask": mp.display().to_string(), "protocol": protocol, "dense": dense, "corrected": after});
        if a.json {
            output::print_json(&r);
        } else {
            print_table(&dense, &[("mask", 0, &after)]);
        }
        return Ok(());
    }

    // One series per (method, criterion); the criteria of a method share its attribution.
    let mut sweeps: Vec<Series> = Vec::new();
    let mut masks_out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut first_ranking: Option<Ranking> = None;
    let mut attr_runs = Vec::new();
    // What decides each attribution's result (checkpoints of another run are refused).
    let (u_sha, g_sha) = (
        super::sha256_json(&attr_targets),
        super::sha256_json(&general.samples),
    );
    for &m in &methods {
        let t0 = std::time::Instant::now();
        let fp = |set: &str, sha: &str| {
            json!({"config": loaded.config_sha256, "dtype": super::dtype_name(req.dtype),
                   "method": m.name(), "objective": objective, "granularity": granularity, "layers": a.layers,
                   "set": set, "ids_sha256": sha,
                   "token_set_lexicon": token_set.as_ref().map(|_| &lexicon.sha256)})
        };
        let runs = [
            a.resume.attr_run(
                a.out.as_deref(),
                &format!("{}-undesired", m.name()),
                &fp("undesired", &u_sha),
                a.force,
            ),
            a.resume.attr_run(
                a.out.as_deref(),
                &format!("{}-general", m.name()),
                &fp("general", &g_sha),
                a.force,
            ),
        ];
        let pb = output::bar(0, m.name(), false);
        let (g, u) = correct::rank_sets(
            model,
            m,
            objective,
            granularity,
            &attr_targets,
            &general.samples,
            &selected,
            [&runs[0], &runs[1]],
            |what, i, n| {
                pb.set_message(format!("{} {what}", m.name()));
                pb.set_length(n as u64);
                pb.set_position(i as u64);
            },
        )?;
        let attributed = t0.elapsed().as_secs_f64();
        attr_runs.extend(runs);
        for &cr in &criteria {
            let t1 = std::time::Instant::now();
            let ranking = Ranking::contrast(&g, &u, cr, a.ratio_smoothing)?;
            let label = if criteria.len() == 1 {
                m.name().to_string()
            } else {
                format!("{}-{}", m.name(), cr.name())
            };
            let mut points = Vec::new();
            for &c in &counts {
                let sel = ranking.remove_lowest(model, c)?;
                pb.set_message(format!("{label} −{c}"));
                let b = beval.run(&pruned(model, &sel.masks)?, |_| {})?;
                let name = format!("mask-{label}-{c}.safetensors");
                masks_out.push((name.clone(), mask::to_bytes(model, &sel.masks)?));
                points.push(Point {
                    count: c,
                    behaviour: b,
                    mask_file: name,
                });
            }
            sweeps.push(Series {
                label,
                method: m,
                criterion: cr,
                points,
                seconds: attributed + t1.elapsed().as_secs_f64(),
            });
            if first_ranking.is_none() {
                first_ranking = Some(ranking);
            }
        }
        pb.finish_and_clear();
    }
    let seconds = start.elapsed().as_secs_f64();
    // The written model: the first method's point with the lowest flagged-sample rate among
    // those within the perplexity budget (the smaller count on ties).
    let (cm, ccrit) = (sweeps[0].method, sweeps[0].criterion);
    let within = |b: &Behaviour| match (b.ppl, dense.ppl) {
        (Some(p), Some(d)) => p <= d * (1.0 + a.max_ppl_rise),
        _ => true,
    };
    let cc = match sweeps[0]
        .points
        .iter()
        .filter(|p| within(&p.behaviour))
        .min_by(|x, y| {
            x.behaviour
                .flagged_sample_rate
                .total_cmp(&y.behaviour.flagged_sample_rate)
                .then(x.count.cmp(&y.count))
        }) {
        Some(p) => p.count,
        None => {
            eprintln!(
                "warning: no --count kept perplexity within +{:.1}%; writing the smallest ({})",
                a.max_ppl_rise * 100.0,
                counts[0]
            );
            counts[0]
        }
    };
    let cmask = first_ranking
        .expect("one method at least")
        .remove_lowest(model, cc)?
        .masks;
    let report = json!({
        "command": "correct",
        "protocol": protocol,
        "dense": dense,
        "sweeps": sweeps.iter().map(|s| json!({"method": s.method.name(), "criterion": s.criterion.name(), "points": s.points, "seconds": s.seconds})).collect::<Vec<_>>(),
        "written": {"method": cm.name(), "criterion": ccrit.name(), "count": cc, "rule": format!("lowest flagged-sample rate with perplexity within +{:.1}% (first method and criterion)", a.max_ppl_rise * 100.0)},
        "seconds": seconds,
        "peak_rss_bytes": crate::util::peak_rss(),
    });
    let chart = svg::line_chart(&svg::LineChart {
        title: "Undesired behaviour against general perplexity",
        x_label: "perplexity (general text)",
        y_label: "flagged-sample rate (held-out)",
        log_x: false,
        log_y: false,
        hline: None,
        series: sweeps
            .iter()
            .map(|sw| svg::Series {
                name: sw.label.clone(),
                points: std::iter::once((dense.ppl.unwrap_or(0.0), dense.flagged_sample_rate))
                    .chain(sw.points.iter().map(|p| {
                        (
                            p.behaviour.ppl.unwrap_or(0.0),
                            p.behaviour.flagged_sample_rate,
                        )
                    }))
                    .collect(),
                mark: std::ptr::eq(sw, &sweeps[0])
                    .then(|| sw.points.iter().find(|p| p.count == cc))
                    .flatten()
                    .map(|p| {
                        (
                            p.behaviour.ppl.unwrap_or(0.0),
                            p.behaviour.flagged_sample_rate,
                        )
                    }),
            })
            .collect(),
    });
    let corrected = pruned(model, &cmask)?;
    let mut files = vec![
        (
            "correct-report.json".to_string(),
            serde_json::to_vec_pretty(&report)?,
        ),
        ("sweep.svg".to_string(), chart.into_bytes()),
        (
            "mask.safetensors".to_string(),
            mask::to_bytes(model, &cmask)?,
        ),
    ];
    files.extend(masks_out);
    let out = a.out.as_ref().expect("required without --mask");
    crate::io::hf::write_model(&loaded, &corrected, out, a.force, None, &files)?;
    for c in attr_runs.iter().filter_map(|r| r.checkpoint.as_ref()) {
        c.remove();
    }
    if a.json {
        output::print_json(&report);
        return Ok(());
    }
    let rows: Vec<(&str, usize, &Behaviour)> = sweeps
        .iter()
        .flat_map(|sw| {
            sw.points
                .iter()
                .map(move |p| (sw.label.as_str(), p.count, &p.behaviour))
        })
        .collect();
    print_table(&dense, &rows);
    outln!(
        "wrote {} ({} {} −{cc} {}), {seconds:.0} s",
        out.display(),
        cm.name(),
        ccrit.name(),
        granularity.name()
    );
    Ok(())
}

fn eos_ids(cfg: &Value) -> Vec<u32> {
    match cfg.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}

fn print_table(dense: &Behaviour, rows: &[(&str, usize, &Behaviour)]) {
    outln!(
        "{:<20} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9}",
        "method",
        "count",
        "logp/tok",
        "flag-smp",
        "flag-pr",
        "flag-grd",
        "uniq",
        "ppl"
    );
    let line = |name: &str, c: String, b: &Behaviour| {
        outln!(
            "{:<20} {:>6} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>8.3} {:>9}",
            name,
            c,
            b.logprob_per_token,
            b.flagged_sample_rate,
            b.flagged_prompt_rate,
            b.greedy_flagged_rate,
            b.greedy_unique_ratio,
            b.ppl.map_or("-".into(), |p| format!("{p:.4}"))
        );
    };
    line("dense", "0".into(), dense);
    for (m, c, b) in rows {
        line(m, c.to_string(), b);
    }
}
