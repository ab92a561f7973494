//! `circuit`: the sparse sub-network that carries a two-choice task (IOI built in, or a task
//! file), found per scoring method by ranking components once and searching the kept fraction.

pub mod search;
pub mod survivors;

use super::{Artefact, DataRef, LayerFilter, Progress, Provenance, Resume};
use crate::eval::task::{self, TaskMetrics};
use crate::lrp::checkpoint::Checkpoint;
use crate::model::DecoderModel;
use crate::prune::mask::{self, Scope};
use crate::prune::method::Method;
use crate::prune::ranking::pruned;
use crate::prune::structured::Granularity;
use crate::source::Loaded;
use crate::tasks::task::{TaskInfo, TaskPrompt, TaskSet};
use crate::{fail, invalid};
use anyhow::Result;
use search::CurvePoint;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use survivors::Survivors;

/// Dense accuracy below which the task is not solved and a circuit would mean nothing.
pub const MIN_DENSE_ACCURACY: f64 = 0.6;

#[derive(Clone, Debug)]
pub enum TaskSource {
    /// The built-in IOI generator, with its templates and word lists (None: configs/ioi.toml).
    Ioi { config: Option<PathBuf> },
    /// A JSONL file of {"prompt", "target", "foil"} records.
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub task: TaskSource,
    /// Attribution prompts.
    pub samples: usize,
    /// Held-out evaluation prompts (never attributed on).
    pub eval_samples: usize,
    pub methods: Vec<Method>,
    pub granularity: Granularity,
    /// Weight granularity only: grouping for every method (None: each method's own).
    pub scope: Option<Scope>,
    pub layers: LayerFilter,
    /// The circuit keeps at least this fraction of the dense held-out accuracy, in (0, 1].
    pub keep_metric: f64,
    pub seed: u64,
    pub resume: Resume,
    /// The output location; checkpoints are kept beside it.
    pub out: Option<PathBuf>,
    /// Also produce the pruned model of each method.
    pub save_model: bool,
    pub force_memory: bool,
}

/// One method's circuit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodResult {
    pub method: Method,
    /// The grouping (weight granularity only).
    pub scope: Option<Scope>,
    pub circuit: CurvePoint,
    pub curve: Vec<CurvePoint>,
    pub evaluations: usize,
    pub survivors: Survivors,
    pub mask_file: String,
    pub seconds_rank: f64,
    pub seconds_search: f64,
}

/// `circuit-report.json` and `circuit --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub task: TaskInfo,
    pub granularity: Granularity,
    pub layers_regex: Option<String>,
    pub keep_metric: f64,
    pub threshold_accuracy: f64,
    pub dense: TaskMetrics,
    pub methods: Vec<MethodResult>,
    /// The first held-out prompts, to show what the task is.
    pub examples: Vec<TaskPrompt>,
}

/// `circuit --mask --json`: a saved circuit evaluated on the held-out prompts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MaskReport {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub mask: String,
    pub task: TaskInfo,
    pub dense: TaskMetrics,
    pub circuit: TaskMetrics,
    pub kept_weight_fraction_in_masked_layers: f64,
}

pub struct Outcome {
    pub report: Report,
    /// The report, `curve.svg`, and per method its mask and map.
    pub files: Vec<Artefact>,
    /// With `save_model`: `(subdirectory, pruned model)` per method.
    pub models: Vec<(String, DecoderModel)>,
    pub checkpoints: Vec<Checkpoint>,
}

/// The task's prompts and the dense model's held-out metrics.
pub struct Prepared {
    pub tasks: TaskSet,
    pub dense: TaskMetrics,
    data: Vec<DataRef>,
    /// When the job's work began (reports time the whole job).
    started: std::time::Instant,
}

/// Input files the outputs must never overwrite.
pub fn inputs(cfg: &Config) -> Vec<PathBuf> {
    match &cfg.task {
        TaskSource::Ioi { config } => config.iter().cloned().collect(),
        TaskSource::File(p) => vec![p.clone()],
    }
}

pub fn prepare(loaded: &Loaded, cfg: &Config) -> Result<Prepared> {
    let started = std::time::Instant::now();
    let tasks = match &cfg.task {
        TaskSource::Ioi { config } => crate::tasks::ioi::generate(
            config.as_deref(),
            &loaded.tokenizer,
            cfg.samples,
            cfg.eval_samples,
            cfg.seed,
        )?,
        TaskSource::File(p) => crate::tasks::task::from_file(
            p,
            &loaded.tokenizer,
            cfg.samples,
            cfg.eval_samples,
            cfg.seed,
        )?,
    };
    let max = loaded.model.dims.max_positions;
    if let Some(p) = tasks
        .attribution
        .iter()
        .chain(&tasks.evaluation)
        .find(|p| p.ids.len() > max)
    {
        fail!(
            Input,
            "a prompt of {} tokens is longer than the model allows ({max} positions): {:?}",
            p.ids.len(),
            p.prompt
        );
    }
    let dense = task::evaluate(&loaded.model, &tasks.evaluation)?;
    let data = vec![DataRef::new("task", &tasks.info.source, &tasks.info.sha256)];
    Ok(Prepared {
        tasks,
        dense,
        data,
        started,
    })
}

/// Evaluate a saved circuit mask on the held-out prompts.
pub fn evaluate_mask(loaded: &Loaded, prep: &Prepared, path: &Path) -> Result<MaskReport> {
    let start = prep.started;
    let model = &loaded.model;
    let masks = mask::read(path, model)?;
    let m = task::evaluate(&pruned(model, &masks)?, &prep.tasks.evaluation)?;
    let (kept, total) = masks.values().fold((0usize, 0usize), |(k, t), m| {
        (k + m.iter().filter(|&&x| !x).count(), t + m.len())
    });
    Ok(MaskReport {
        provenance: Provenance::of("circuit --mask", loaded, prep.data.clone(), start),
        mask: path.display().to_string(),
        task: prep.tasks.info.clone(),
        dense: prep.dense.clone(),
        circuit: m,
        kept_weight_fraction_in_masked_layers: kept as f64 / total.max(1) as f64,
    })
}

/// Search the circuit of every method.
pub fn run(
    loaded: &Loaded,
    cfg: &Config,
    prep: &Prepared,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let start = prep.started;
    check(cfg)?;
    let dense = &prep.dense;
    if dense.accuracy < MIN_DENSE_ACCURACY {
        fail!(
            Input,
            "the dense model does not solve the task: held-out accuracy {:.3} over {} prompts (mean logit difference {:.3}); a circuit needs accuracy ≥ {MIN_DENSE_ACCURACY}",
            dense.accuracy,
            dense.prompts,
            dense.logit_diff
        );
    }
    let mut results = Vec::new();
    let mut checkpoints = Vec::new();
    for &m in &super::dedup(&cfg.methods) {
        let (r, sel, ckpt) = one_method(loaded, cfg, prep, m, progress)?;
        results.push((r, sel));
        checkpoints.extend(ckpt);
    }
    let report = Report {
        provenance: Provenance::of("circuit", loaded, prep.data.clone(), start),
        task: prep.tasks.info.clone(),
        granularity: cfg.granularity,
        layers_regex: cfg.layers.pattern(),
        keep_metric: cfg.keep_metric,
        threshold_accuracy: cfg.keep_metric * dense.accuracy,
        dense: dense.clone(),
        methods: results.iter().map(|(r, _)| r.clone()).collect(),
        examples: prep.tasks.evaluation.iter().take(3).cloned().collect(),
    };
    let (files, models) = artefacts(loaded, cfg, &report, &results)?;
    Ok(Outcome {
        report,
        files,
        models,
        checkpoints,
    })
}

fn check(cfg: &Config) -> Result<()> {
    if cfg.granularity != Granularity::Weight && cfg.scope.is_some() {
        invalid!(Scope, "applies to weight granularity only");
    }
    if let Some(s) = cfg
        .scope
        .filter(|s| !matches!(s, Scope::Row | Scope::Global))
    {
        invalid!(Scope, "{}: circuits rank by row or globally", s.name());
    }
    if let Some(m) = cfg.methods.iter().find(|m| !m.can_rank()) {
        invalid!(Method, "{} does not rank components", m.name());
    }
    Ok(())
}

type Masks = std::collections::HashMap<String, Vec<bool>>;

/// Rank, then search, for one method.
fn one_method(
    loaded: &Loaded,
    cfg: &Config,
    prep: &Prepared,
    m: Method,
    progress: &dyn Progress,
) -> Result<(MethodResult, Masks, Option<Checkpoint>)> {
    let model = &loaded.model;
    let selected = |name: &str| cfg.layers.selects(name);
    let scope = cfg.scope.unwrap_or(m.rank_scope());
    let ids: Vec<(&[u32], u32, u32)> = prep
        .tasks
        .attribution
        .iter()
        .map(|p| (p.ids.as_slice(), p.target_id, p.foil_id))
        .collect();
    let t0 = std::time::Instant::now();
    progress.stage(m.name(), prep.tasks.attribution.len() as u64);
    let dtype = super::report::storage_dtype(loaded);
    let run = cfg.resume.attr_run(
        cfg.out.as_deref(),
        &format!("{}-task", m.name()),
        &serde_json::json!({"config": loaded.config_sha256, "dtype": dtype,
                "method": m.name(), "granularity": cfg.granularity.name(), "layers": cfg.layers.pattern(),
                "ids_sha256": super::sha256_json(&ids)}),
        cfg.force_memory,
    );
    let ranking = search::rank_task(
        model,
        &prep.tasks.attribution,
        m,
        cfg.granularity,
        scope,
        &selected,
        &run,
        |i, _| progress.position(i as u64, None),
    )?;
    progress.done();
    let seconds_rank = t0.elapsed().as_secs_f64();
    progress.stage(&format!("{} search", m.name()), 0);
    let res = search::search(
        model,
        &ranking,
        &prep.tasks.evaluation,
        &prep.dense,
        cfg.keep_metric,
        &selected,
        |i| progress.position(i as u64, None),
    )?;
    progress.done();
    let r = MethodResult {
        method: m,
        scope: (cfg.granularity == Granularity::Weight).then_some(scope),
        circuit: res.found,
        evaluations: res.curve.len(),
        curve: res.curve,
        survivors: survivors::survivors(model, &res.selection.masks, &selected)?,
        mask_file: format!("mask-{}.safetensors", m.name()),
        seconds_rank,
        seconds_search: t0.elapsed().as_secs_f64() - seconds_rank,
    };
    Ok((r, res.selection.masks, run.checkpoint))
}

type Written = (Vec<Artefact>, Vec<(String, DecoderModel)>);

/// The report, the accuracy curves, and per method the mask, its map and (optionally) the
/// pruned model.
fn artefacts(
    loaded: &Loaded,
    cfg: &Config,
    report: &Report,
    results: &[(MethodResult, Masks)],
) -> Result<Written> {
    let model = &loaded.model;
    let mut files = vec![
        (
            "circuit-report.json".to_string(),
            serde_json::to_vec_pretty(report)?,
        ),
        ("curve.svg".to_string(), curve_svg(report).into_bytes()),
    ];
    let mut models = Vec::new();
    for (r, masks) in results {
        let name = r.method.name();
        files.push((r.mask_file.clone(), mask::to_bytes(model, masks)?));
        let map = survivors::map_svg(model, masks, cfg.granularity, name)?;
        files.push((format!("map-{name}.svg"), map.into_bytes()));
        if cfg.save_model {
            models.push((format!("model-{name}"), pruned(model, masks)?));
        }
    }
    Ok((files, models))
}

/// Held-out accuracy against the kept fraction, one line per method, the threshold marked.
pub fn curve_svg(r: &Report) -> String {
    let unit = survivors::unit_word(r.granularity);
    crate::io::svg::line_chart(&crate::io::svg::LineChart {
        title: &format!("{}: held-out accuracy against {unit} kept", r.task.name),
        x_label: &format!("fraction of {unit} kept (log scale)"),
        y_label: "held-out accuracy",
        log_x: true,
        log_y: false,
        hline: Some((
            r.threshold_accuracy,
            format!("{:.0}% of dense", r.keep_metric * 100.0),
        )),
        series: r
            .methods
            .iter()
            .map(|m| crate::io::svg::Series {
                name: m.method.name().to_string(),
                points: std::iter::once((1.0, r.dense.accuracy))
                    .chain(m.curve.iter().map(|p| (p.kept_fraction, p.accuracy)))
                    .collect(),
                mark: Some((m.circuit.kept_fraction, m.circuit.accuracy)),
            })
            .collect(),
    })
}
