//! `sparc3 sweep`: perplexity against sparsity for several methods, one attribution (or one
//! relevance file) per method reused for every ratio; a table, a report and an SVG chart.

use super::compress::{MethodArg, Prepared, PruneArgs, ScopeArg};
use super::{output, ModelArgs};
use crate::fail;
use crate::io::svg;
use crate::prune::compress::{self, CompressJob, Method};
use crate::prune::mask::Pattern;
use anyhow::Result;
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sparsities to prune to, comma-separated, each in (0, 1).
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        default_value = "0.1,0.2,0.3,0.4,0.5,0.6,0.7"
    )]
    pub ratios: Vec<f64>,
    /// Methods compared, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "lrp,wanda,magnitude"
    )]
    pub methods: Vec<MethodArg>,
    #[command(flatten)]
    pub prune: PruneArgs,
    /// Directory for `sweep-report.json` and `sweep.svg`.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Point {
    ratio: f64,
    ppl: f64,
    seconds: f64,
}

pub fn run(a: SweepArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    let pattern = Pattern::parse(&a.prune.pattern)?;
    let mut ratios: Vec<f64> = match pattern {
        Pattern::NM { n, m } => vec![n as f64 / m as f64],
        Pattern::Unstructured => a.ratios.clone(),
    };
    if let Some(r) = ratios.iter().find(|r| !(**r > 0.0 && **r < 1.0)) {
        fail!(Usage, "--ratios values must be in (0, 1), got {r}");
    }
    ratios.sort_by(f64::total_cmp);
    ratios.dedup();
    let mut methods: Vec<Method> = Vec::new();
    for m in &a.methods {
        if !methods.contains(&m.method()) {
            methods.push(m.method());
        }
    }
    let layers = super::parse_layers(&a.prune.layers)?;
    let req = a.model.request()?;
    let loaded = crate::source::load(&req)?;
    crate::io::hf::check_out_dir(&a.out, a.force, &loaded, &a.prune.inputs(&a.model))?;
    let relevance = a.prune.relevance()?;
    let fresh_attribution = methods
        .iter()
        .any(|m| m.needs_calibration() && !(relevance.is_some() && is_relevance(*m)));
    let prep = Prepared::new(&loaded, &a.prune.calib, &a.prune.eval, fresh_attribution)?;
    if prep.eval.is_none() {
        fail!(
            Usage,
            "sweep needs --eval FILE (perplexity text) for this model"
        );
    }
    let dense = prep.ppl(&loaded.model)?.expect("eval checked");
    let label = a
        .prune
        .scores
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let start = std::time::Instant::now();
    let mut series: Vec<(Method, f64, Vec<Point>)> = Vec::new();
    for &method in &methods {
        let scope = a
            .prune
            .scope
            .map_or(method.default_scope(), ScopeArg::scope);
        let pb = output::bar((ratios.len()) as u64, method.name(), false);
        let t0 = std::time::Instant::now();
        let mut job = CompressJob {
            method,
            ratio: ratios[0],
            scope,
            pattern,
            samples: prep.samples(),
            target: prep.target.clone(),
            aggregation: prep.aggregation,
            scores: relevance
                .as_ref()
                .filter(|_| is_relevance(method))
                .map(|r| (r, label.clone())),
            config_sha256: &loaded.config_sha256,
            layers: layers.clone(),
            update_obs: false,
            checkpoint: None,
            resume: false,
            force_memory: a.force,
            precomputed: None,
        };
        // One scoring per method: Wanda and SparseGPT score while they prune (block replay
        // through the already-pruned blocks), so they rerun per ratio as their references do.
        let selected = |name: &str| layers.as_ref().is_none_or(|r| r.is_match(name));
        let scores = match method {
            Method::Wanda | Method::SparseGpt => None,
            _ => Some(compress::scores_of(
                &loaded.model,
                &job,
                &selected,
                &mut |what: &str, i, n| {
                    pb.set_message(format!("{} {what} {i}/{n}", method.name()));
                },
            )?),
        };
        let scoring = t0.elapsed().as_secs_f64();
        let mut points = Vec::new();
        for &r in &ratios {
            let t1 = std::time::Instant::now();
            pb.set_message(format!("{} {r}", method.name()));
            job.ratio = r;
            job.precomputed = scores.as_ref();
            let mut m = loaded.model.clone();
            compress::compress(&mut m, &job, |_, _, _| {})?;
            let ppl = prep.ppl(&m)?.expect("eval checked").ppl;
            points.push(Point {
                ratio: r,
                ppl,
                seconds: t1.elapsed().as_secs_f64(),
            });
            pb.inc(1);
        }
        pb.finish_and_clear();
        series.push((method, scoring, points));
    }
    let seconds = start.elapsed().as_secs_f64();
    let report = json!({
        "command": "sweep",
        "model": loaded.origin,
        "config_sha256": loaded.config_sha256,
        "pattern": pattern.name(),
        "scope": a.prune.scope.map(ScopeArg::scope),
        "layers_regex": a.prune.layers,
        "calibration": prep.calib.as_ref().map(|c| &c.info),
        "scores_file": a.prune.scores,
        "scores_protocol": relevance.as_ref().map(|r| &r.meta),
        "target": prep.target.name(),
        "aggregation": prep.aggregation,
        "eval": prep.eval_info(Some(dense.windows)),
        "dtype": super::dtype_name(req.dtype),
        "ppl_dense": dense.ppl,
        "series": series.iter().map(|(m, s, p)| json!({
            "method": m.name(),
            "scope": a.prune.scope.map_or(m.default_scope(), ScopeArg::scope),
            "seconds_scores": s,
            "points": p,
        })).collect::<Vec<_>>(),
        "seconds": seconds,
        "peak_rss_bytes": crate::util::peak_rss(),
        "sparc3_version": env!("CARGO_PKG_VERSION"),
    });
    let chart = svg::line_chart(&svg::LineChart {
        title: "Perplexity against sparsity",
        x_label: "sparsity (fraction of weights removed)",
        y_label: "perplexity (log scale)",
        log_x: false,
        log_y: true,
        hline: Some((dense.ppl, format!("dense {:.2}", dense.ppl))),
        series: series
            .iter()
            .map(|(m, _, pts)| svg::Series {
                name: m.name().to_string(),
                points: pts.iter().map(|p| (p.ratio, p.ppl)).collect(),
                mark: None,
            })
            .collect(),
    });
    let report_bytes = serde_json::to_vec_pretty(&report)?;
    crate::io::atomic_dir(&a.out, a.force, |dir| {
        crate::io::write_in(dir, "sweep-report.json", &report_bytes)?;
        crate::io::write_in(dir, "sweep.svg", chart.as_bytes())
    })?;
    if a.json {
        output::print_json(&report);
        return Ok(());
    }
    out!("{:<8}", "ratio");
    for (m, _, _) in &series {
        out!(" {:>12}", m.name());
    }
    outln!();
    outln!("{:<8} {:>12.4}  (dense)", "0", dense.ppl);
    for (i, r) in ratios.iter().enumerate() {
        out!("{r:<8}");
        for (_, _, pts) in &series {
            out!(" {:>12.4}", pts[i].ppl);
        }
        outln!();
    }
    outln!(
        "perplexity on {} ({} windows of {}); wrote {}, {seconds:.0} s",
        prep.eval.as_ref().map_or("-", |e| e.0.label.as_str()),
        dense.windows,
        prep.eval_seq,
        a.out.display()
    );
    Ok(())
}

fn is_relevance(m: Method) -> bool {
    matches!(m, Method::Lrp | Method::Gradient)
}
