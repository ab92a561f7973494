//! `sweep`: perplexity against sparsity for several methods, one attribution (or one relevance
//! file) per method reused for every ratio; a report and an SVG chart.

use super::compress::engine::{self, CompressJob};
use super::prepare::{Prepared, PruneProtocol, PruneSetup};
use super::{Artefact, Progress, Provenance};
use crate::invalid;
use crate::io::svg;
use crate::lrp::file::RelevanceReader;
use crate::prune::mask::{Pattern, Scope};
use crate::prune::method::Method;
use crate::source::Loaded;
use anyhow::Result;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug)]
pub struct Config {
    /// Sparsities, each in (0, 1) (an N:M pattern has its own, N/M).
    pub ratios: Vec<f64>,
    pub methods: Vec<Method>,
    pub prune: PruneSetup,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub ratio: f64,
    pub ppl: f64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Series {
    pub method: Method,
    pub scope: Scope,
    pub seconds_scores: f64,
    pub points: Vec<Point>,
}

/// `sweep-report.json` and `sweep --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    #[serde(flatten)]
    pub protocol: PruneProtocol,
    /// The grouping asked for (None: each series' own, recorded in the series).
    pub scope: Option<Scope>,
    pub ppl_dense: f64,
    pub series: Vec<Series>,
}

pub struct Outcome {
    pub report: Report,
    /// `sweep-report.json` and `sweep.svg`.
    pub files: Vec<Artefact>,
}

/// The ratios a sweep evaluates: sorted, without repeats; N:M has exactly one.
pub fn ratios(cfg: &Config) -> Result<Vec<f64>> {
    let mut ratios: Vec<f64> = match cfg.prune.pattern {
        Pattern::NM { n, m } => vec![n as f64 / m as f64],
        Pattern::Unstructured => cfg.ratios.clone(),
    };
    if let Some(r) = ratios.iter().find(|r| !(**r > 0.0 && **r < 1.0)) {
        invalid!(Ratios, "values must be in (0, 1), got {r}");
    }
    ratios.sort_by(f64::total_cmp);
    ratios.dedup();
    Ok(ratios)
}

pub fn run(loaded: &Loaded, cfg: &Config, progress: &dyn Progress) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let ratios = ratios(cfg)?;
    let methods = super::dedup(&cfg.methods);
    let relevance = cfg.prune.open_scores()?;
    let fresh_attribution = methods
        .iter()
        .any(|m| m.needs_calibration() && !(relevance.is_some() && m.is_relevance()));
    let prep = Prepared::new(loaded, &cfg.prune.calib, &cfg.prune.eval, fresh_attribution)?;
    if prep.eval.is_none() {
        invalid!(EvalText, "is needed by sweep for this model");
    }
    let dense = prep.ppl(&loaded.model)?.expect("eval checked");
    let label = cfg
        .prune
        .scores
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut series = Vec::new();
    for &method in &methods {
        let scores = relevance
            .as_ref()
            .filter(|_| method.is_relevance())
            .map(|r| (r, label.clone()));
        series.push(one_method(
            loaded, cfg, &prep, method, scores, &ratios, progress,
        )?);
    }
    let report = Report {
        provenance: Provenance::of(
            "sweep",
            loaded,
            prep.data_refs_with(relevance.as_ref()),
            start,
        ),
        protocol: prep.protocol(
            &cfg.prune.pattern,
            &cfg.prune.layers,
            cfg.prune.scores.as_ref().zip(relevance.as_ref()),
            false,
            Some(dense.windows),
        ),
        scope: cfg.prune.scope,
        ppl_dense: dense.ppl,
        series,
    };
    let files = vec![
        (
            "sweep-report.json".to_string(),
            serde_json::to_vec_pretty(&report)?,
        ),
        ("sweep.svg".to_string(), chart(&report).into_bytes()),
    ];
    Ok(Outcome { report, files })
}

/// One method's curve. Wanda and SparseGPT score while they prune (block replay through the
/// already-pruned blocks), so they rerun per ratio as their references do; the others score
/// once.
fn one_method(
    loaded: &Loaded,
    cfg: &Config,
    prep: &Prepared,
    method: Method,
    scores: Option<(&RelevanceReader, String)>,
    ratios: &[f64],
    progress: &dyn Progress,
) -> Result<Series> {
    let scope = cfg.prune.scope.unwrap_or(method.compress_scope());
    progress.stage(method.name(), ratios.len() as u64);
    let t0 = std::time::Instant::now();
    let mut job = CompressJob {
        method,
        ratio: ratios[0],
        scope,
        pattern: cfg.prune.pattern,
        samples: prep.samples(),
        target: prep.target.clone(),
        aggregation: prep.aggregation,
        scores,
        config_sha256: &loaded.config_sha256,
        layers: cfg.prune.layers.0.clone(),
        update_obs: false,
        checkpoint: None,
        resume: false,
        force_memory: cfg.prune.force_memory,
        keep_masks: false,
        precomputed: None,
    };
    let selected = |name: &str| cfg.prune.layers.selects(name);
    let scores = if method.scores_while_pruning() {
        None
    } else {
        Some(engine::scores_of(
            &loaded.model,
            &job,
            &selected,
            &mut |what: &str, i, n| {
                progress.message(&format!("{} {what} {i}/{n}", method.name()));
            },
        )?)
    };
    let seconds_scores = t0.elapsed().as_secs_f64();
    let mut points = Vec::new();
    for (k, &r) in ratios.iter().enumerate() {
        let t1 = std::time::Instant::now();
        progress.message(&format!("{} {r}", method.name()));
        job.ratio = r;
        job.precomputed = scores.as_ref();
        let mut m = loaded.model.clone();
        engine::compress(&mut m, &job, |_, _, _| {})?;
        let ppl = prep.ppl(&m)?.expect("eval checked").ppl;
        points.push(Point {
            ratio: r,
            ppl,
            seconds: t1.elapsed().as_secs_f64(),
        });
        progress.position(k as u64 + 1, None);
    }
    progress.done();
    Ok(Series {
        method,
        scope,
        seconds_scores,
        points,
    })
}

/// Perplexity against sparsity, one line per method, the dense model as a horizontal line.
pub fn chart(r: &Report) -> String {
    svg::line_chart(&svg::LineChart {
        title: "Perplexity against sparsity",
        x_label: "sparsity (fraction of weights removed)",
        y_label: "perplexity (log scale)",
        log_x: false,
        log_y: true,
        hline: Some((r.ppl_dense, format!("dense {:.2}", r.ppl_dense))),
        series: r
            .series
            .iter()
            .map(|s| svg::Series {
                name: s.method.name().to_string(),
                points: s.points.iter().map(|p| (p.ratio, p.ppl)).collect(),
                mark: None,
            })
            .collect(),
    })
}
