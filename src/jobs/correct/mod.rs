//! `correct`: remove the components behind an unwanted behaviour (e.g. toxic continuations)
//! while keeping general ability; a sweep over removal counts per method and criterion,
//! evaluated on held-out prompts, and the chosen point written as a model.

pub mod rank;
pub mod setup;

use super::prepare::{EvalInfo, PplConfig};
use super::{Artefact, LayerFilter, Progress, Provenance, Resume};
use crate::eval::behaviour::Behaviour;
use crate::eval::generate::GenConfig;
use crate::lrp::checkpoint::Checkpoint;
use crate::model::DecoderModel;
use crate::prune::mask;
use crate::prune::method::Method;
use crate::prune::ranking::{pruned, Criterion, Ranking};
use crate::prune::structured::Granularity;
use crate::source::Loaded;
use crate::tasks::calib::CalibInfo;
use crate::tasks::undesired::SetInfo;
use anyhow::Result;
pub use rank::Objective;
use serde::{Deserialize, Serialize};
use setup::Prepared;
use std::path::{Path, PathBuf};

/// What the undesired relevance explains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Explain {
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

/// How many components each sweep point removes.
#[derive(Clone, Debug)]
pub enum Amount {
    Counts(Vec<usize>),
    /// Fractions of the components.
    Ratios(Vec<f64>),
    /// 100 (or all, if fewer).
    Default,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The undesired set (JSONL prompt/continuation records or plain prompts).
    pub toxic_set: PathBuf,
    /// General text (None: the built-in text).
    pub general_set: Option<PathBuf>,
    pub general_samples: usize,
    /// Tokens per general window.
    pub seq_len: usize,
    /// At most this many undesired prompts attributed.
    pub samples: Option<usize>,
    pub granularity: Granularity,
    pub layers: LayerFilter,
    pub amount: Amount,
    /// Fraction of the undesired set held out for evaluation.
    pub holdout: f64,
    pub seed: u64,
    /// One sweep each; the first decides the written model.
    pub methods: Vec<Method>,
    pub explain: Explain,
    pub objective: Objective,
    pub criteria: Vec<Criterion>,
    pub ratio_smoothing: f64,
    /// Word list (None: the built-in one).
    pub lexicon: Option<PathBuf>,
    pub eval_prompts: Option<usize>,
    /// Sampled continuations per held-out prompt.
    pub k: usize,
    pub new_tokens: usize,
    pub temperature: f64,
    pub continuation_tokens: usize,
    pub eval: PplConfig,
    /// The written point: lowest flagged rate with perplexity within this rise.
    pub max_ppl_rise: f64,
    pub resume: Resume,
    pub out: Option<PathBuf>,
    pub force_memory: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LexiconInfo {
    pub file: String,
    pub sha256: String,
    pub entries: usize,
}

/// Everything that decides the measurement, besides the provenance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Protocol {
    pub undesired_set: SetInfo,
    pub attributed_prompts: usize,
    pub objective: Objective,
    pub ratio_smoothing: f64,
    pub explain: Explain,
    /// Tokens in the lexicon's token set (explain = lexicon).
    pub lexicon_tokens: Option<usize>,
    pub evaluated_prompts: usize,
    pub general_set: CalibInfo,
    pub lexicon: LexiconInfo,
    pub sampling: GenConfig,
    pub eval: EvalInfo,
    pub granularity: Granularity,
    pub layers_regex: Option<String>,
    pub components: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub count: usize,
    pub behaviour: Behaviour,
    pub mask_file: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sweep {
    pub method: Method,
    pub criterion: Criterion,
    /// `method` alone, or `method-criterion` when several criteria are swept.
    pub label: String,
    pub points: Vec<Point>,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Written {
    pub method: Method,
    pub criterion: Criterion,
    pub count: usize,
    pub rule: String,
}

/// `correct-report.json` and `correct --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub protocol: Protocol,
    pub dense: Behaviour,
    pub sweeps: Vec<Sweep>,
    pub written: Written,
}

/// `correct --mask --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MaskReport {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub mask: String,
    pub protocol: Protocol,
    pub dense: Behaviour,
    pub corrected: Behaviour,
}

pub struct Outcome {
    pub report: Report,
    /// The corrected model.
    pub model: DecoderModel,
    /// The report, `sweep.svg`, the written mask and every sweep point's mask.
    pub files: Vec<Artefact>,
    pub checkpoints: Vec<Checkpoint>,
    /// Set when no point kept perplexity within the budget (the smallest count was written).
    pub over_budget: bool,
}

pub fn protocol(cfg: &Config, prep: &Prepared) -> Protocol {
    let lex = &prep.inputs.lexicon;
    Protocol {
        undesired_set: prep.inputs.set.info.clone(),
        attributed_prompts: prep.attr_targets.len(),
        objective: cfg.objective,
        ratio_smoothing: cfg.ratio_smoothing,
        explain: cfg.explain,
        lexicon_tokens: prep.token_set.as_ref().map(|s| s.len()),
        evaluated_prompts: prep.evaluated_prompts(),
        general_set: prep.general.info.clone(),
        lexicon: LexiconInfo {
            file: lex.label.clone(),
            sha256: lex.sha256.clone(),
            entries: lex.entries,
        },
        sampling: setup::sampling(cfg),
        eval: prep.eval.clone(),
        granularity: cfg.granularity,
        layers_regex: cfg.layers.pattern(),
        components: prep.components,
    }
}

/// Evaluate a saved correction mask instead of attributing.
pub fn evaluate_mask(
    loaded: &Loaded,
    cfg: &Config,
    prep: &Prepared,
    path: &Path,
    progress: &dyn Progress,
) -> Result<MaskReport> {
    let start = prep.started;
    let model = &loaded.model;
    let masks = mask::read(path, model)?;
    progress.stage("masked", 0);
    let after = prep
        .behaviour(loaded, cfg)
        .run(&pruned(model, &masks)?, |w| {
            progress.message(&format!("masked {w}"))
        })?;
    progress.done();
    Ok(MaskReport {
        provenance: Provenance::of("correct --mask", loaded, prep.data_refs(), start),
        mask: path.display().to_string(),
        protocol: protocol(cfg, prep),
        dense: prep.dense.clone(),
        corrected: after,
    })
}

/// One sweep per (method, criterion); the criteria of a method share its attribution.
pub fn run(
    loaded: &Loaded,
    cfg: &Config,
    prep: &Prepared,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let start = prep.started;
    let mut sweeps = Vec::new();
    let mut masks_out = Vec::new();
    let mut first: Option<Ranking> = None;
    let mut checkpoints = Vec::new();
    let criteria = super::dedup(&cfg.criteria);
    for &m in &super::dedup(&cfg.methods) {
        let t0 = std::time::Instant::now();
        let (g, u, ckpts) = rank_method(loaded, cfg, prep, m, progress)?;
        checkpoints.extend(ckpts);
        let attributed = t0.elapsed().as_secs_f64();
        for &cr in &criteria {
            let t1 = std::time::Instant::now();
            let ranking = Ranking::contrast(&g, &u, cr, cfg.ratio_smoothing)?;
            let label = if criteria.len() == 1 {
                m.name().to_string()
            } else {
                format!("{}-{}", m.name(), cr.name())
            };
            let points = sweep(
                loaded,
                cfg,
                prep,
                &ranking,
                &label,
                &mut masks_out,
                progress,
            )?;
            sweeps.push(Sweep {
                method: m,
                criterion: cr,
                label,
                points,
                seconds: attributed + t1.elapsed().as_secs_f64(),
            });
            first.get_or_insert(ranking);
        }
        progress.done();
    }
    let (count, over_budget) = choose(cfg, prep, &sweeps[0]);
    let cmask = first
        .expect("one method at least")
        .remove_lowest(&loaded.model, count)?
        .masks;
    let report = Report {
        provenance: Provenance::of("correct", loaded, prep.data_refs(), start),
        protocol: protocol(cfg, prep),
        dense: prep.dense.clone(),
        written: Written {
            method: sweeps[0].method,
            criterion: sweeps[0].criterion,
            count,
            rule: format!(
                "lowest flagged-sample rate with perplexity within +{:.1}% (first method and criterion)",
                cfg.max_ppl_rise * 100.0
            ),
        },
        sweeps,
    };
    let mut files = vec![
        (
            "correct-report.json".to_string(),
            serde_json::to_vec_pretty(&report)?,
        ),
        ("sweep.svg".to_string(), chart(&report).into_bytes()),
        (
            "mask.safetensors".to_string(),
            mask::to_bytes(&loaded.model, &cmask)?,
        ),
    ];
    files.extend(masks_out);
    Ok(Outcome {
        model: pruned(&loaded.model, &cmask)?,
        report,
        files,
        checkpoints,
        over_budget,
    })
}

type Ranked = (Ranking, Ranking, Vec<Checkpoint>);

/// Rank the components on both sets with one method: `(general, undesired)`.
fn rank_method(
    loaded: &Loaded,
    cfg: &Config,
    prep: &Prepared,
    m: Method,
    progress: &dyn Progress,
) -> Result<Ranked> {
    let dtype = super::report::storage_dtype(loaded);
    let lexicon_sha = prep.token_set.as_ref().map(|_| &prep.inputs.lexicon.sha256);
    // What decides each attribution's result (checkpoints of another run are refused).
    let fp = |set: &str, sha: &str| {
        serde_json::json!({"config": loaded.config_sha256, "dtype": dtype,
               "method": m.name(), "objective": cfg.objective, "granularity": cfg.granularity,
               "layers": cfg.layers.pattern(), "set": set, "ids_sha256": sha,
               "token_set_lexicon": lexicon_sha})
    };
    let u_sha = super::sha256_json(&prep.attr_targets);
    let g_sha = super::sha256_json(&prep.general.samples);
    let out = cfg.out.as_deref();
    let runs = [
        cfg.resume.attr_run(
            out,
            &format!("{}-undesired", m.name()),
            &fp("undesired", &u_sha),
            cfg.force_memory,
        ),
        cfg.resume.attr_run(
            out,
            &format!("{}-general", m.name()),
            &fp("general", &g_sha),
            cfg.force_memory,
        ),
    ];
    progress.stage(m.name(), 0);
    let selected = |name: &str| cfg.layers.selects(name);
    let (g, u) = rank::rank_sets(
        &loaded.model,
        m,
        cfg.objective,
        cfg.granularity,
        &prep.attr_targets,
        &prep.general.samples,
        &selected,
        [&runs[0], &runs[1]],
        |what, i, n| {
            progress.message(&format!("{} {what}", m.name()));
            progress.position(i as u64, Some(n as u64));
        },
    )?;
    let ckpts = runs.into_iter().filter_map(|r| r.checkpoint).collect();
    Ok((g, u, ckpts))
}

/// Remove the lowest `count` components for every count and measure the behaviour.
fn sweep(
    loaded: &Loaded,
    cfg: &Config,
    prep: &Prepared,
    ranking: &Ranking,
    label: &str,
    masks_out: &mut Vec<Artefact>,
    progress: &dyn Progress,
) -> Result<Vec<Point>> {
    let model = &loaded.model;
    let beval = prep.behaviour(loaded, cfg);
    let mut points = Vec::new();
    for &c in &prep.counts {
        let sel = ranking.remove_lowest(model, c)?;
        progress.message(&format!("{label} −{c}"));
        let b = beval.run(&pruned(model, &sel.masks)?, |_| {})?;
        let name = format!("mask-{label}-{c}.safetensors");
        masks_out.push((name.clone(), mask::to_bytes(model, &sel.masks)?));
        points.push(Point {
            count: c,
            behaviour: b,
            mask_file: name,
        });
    }
    Ok(points)
}

/// The written point: the first sweep's lowest flagged-sample rate among the points within
/// the perplexity budget (the smaller count on ties); the smallest count if none is.
fn choose(cfg: &Config, prep: &Prepared, first: &Sweep) -> (usize, bool) {
    let within = |b: &Behaviour| match (b.ppl, prep.dense.ppl) {
        (Some(p), Some(d)) => p <= d * (1.0 + cfg.max_ppl_rise),
        _ => true,
    };
    let best = first
        .points
        .iter()
        .filter(|p| within(&p.behaviour))
        .min_by(|x, y| {
            x.behaviour
                .flagged_sample_rate
                .total_cmp(&y.behaviour.flagged_sample_rate)
                .then(x.count.cmp(&y.count))
        });
    match best {
        Some(p) => (p.count, false),
        None => (prep.counts[0], true),
    }
}

/// Flagged-sample rate against perplexity, one line per sweep, the written point marked.
pub fn chart(r: &Report) -> String {
    let xy = |b: &Behaviour| (b.ppl.unwrap_or(0.0), b.flagged_sample_rate);
    crate::io::svg::line_chart(&crate::io::svg::LineChart {
        title: "Undesired behaviour against general perplexity",
        x_label: "perplexity (general text)",
        y_label: "flagged-sample rate (held-out)",
        log_x: false,
        log_y: false,
        hline: None,
        series: r
            .sweeps
            .iter()
            .enumerate()
            .map(|(i, sw)| crate::io::svg::Series {
                name: sw.label.clone(),
                points: std::iter::once(xy(&r.dense))
                    .chain(sw.points.iter().map(|p| xy(&p.behaviour)))
                    .collect(),
                mark: (i == 0)
                    .then(|| sw.points.iter().find(|p| p.count == r.written.count))
                    .flatten()
                    .map(|p| xy(&p.behaviour)),
            })
            .collect(),
    })
}
