use super::{output, ModelArgs};
use crate::eval::task::{self, TaskMetrics};
use crate::fail;
use crate::io::svg;
use crate::model::DecoderModel;
use crate::prune::circuit::{self, CircuitMethod, SearchResult};
use crate::prune::mask::{self, Scope};
use crate::prune::structured::Granularity;
use crate::tasks::task::TaskSet;
use anyhow::Result;
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GranularityArg {
    Weight,
    Neuron,
    Head,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScopeArg {
    Row,
    Global,
}

#[derive(Args, Debug)]
pub struct CircuitArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// `ioi` (built in) or a JSONL file of {"prompt", "target", "foil"} records.
    #[arg(long, default_value = "ioi")]
    pub task: String,
    /// IOI templates and word lists (default: the built-in configs/ioi.toml).
    #[arg(long)]
    pub task_config: Option<PathBuf>,
    /// Attribution prompts.
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Held-out evaluation prompts (never attributed on).
    #[arg(long, default_value_t = 128)]
    pub eval_samples: usize,
    /// Scoring methods, comma-separated (one curve each), e.g. lrp,gradient,wanda.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "lrp")]
    pub method: Vec<super::ScoreArg>,
    #[arg(long, value_enum, default_value = "weight")]
    pub granularity: GranularityArg,
    /// Weight granularity only: grouping for every method (default: Wanda per row, the others
    /// global).
    #[arg(long, value_enum)]
    pub scope: Option<ScopeArg>,
    /// Only prune linear layers whose name matches this regex.
    #[arg(long)]
    pub layers: Option<String>,
    /// The circuit must keep at least this fraction of the dense held-out accuracy, in (0, 1].
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub keep_metric: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate a saved circuit mask on the held-out prompts instead of searching.
    #[arg(long, conflicts_with_all = ["out", "save_model"])]
    pub mask: Option<PathBuf>,
    /// Output directory: report, masks, SVG pictures (and the pruned model with --save-model).
    #[arg(long, required_unless_present = "mask")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub resume: super::ResumeArgs,
    /// Overwrite an existing --out; run past the memory guard.
    #[arg(long)]
    pub force: bool,
    /// Also write the pruned model(s) in HF layout (`model-<method>/`).
    #[arg(long)]
    pub save_model: bool,
    #[arg(long)]
    pub json: bool,
}

/// Dense accuracy below which the task is not solved and a circuit would mean nothing.
const MIN_DENSE_ACCURACY: f64 = 0.6;

pub fn run(a: CircuitArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    if !(a.keep_metric > 0.0 && a.keep_metric <= 1.0) {
        fail!(
            Usage,
            "--keep-metric must be in (0, 1], got {}",
            a.keep_metric
        );
    }
    if a.samples == 0 || a.eval_samples == 0 {
        fail!(Usage, "--samples and --eval-samples must be at least 1");
    }
    let methods: Vec<CircuitMethod> = super::score_methods(&a.method);
    let granularity = match a.granularity {
        GranularityArg::Weight => Granularity::Weight,
        GranularityArg::Neuron => Granularity::Neuron,
        GranularityArg::Head => Granularity::Head,
    };
    if a.scope.is_some() && granularity != Granularity::Weight {
        fail!(Usage, "--scope applies to --granularity weight only");
    }
    a.resume.check()?;
    let layers = super::parse_layers(&a.layers)?;
    let selected = |name: &str| layers.as_ref().is_none_or(|r| r.is_match(name));
    let req = a.model.request()?;
    let loaded = crate::source::load(&req)?;
    let task_path = (a.task != "ioi").then(|| PathBuf::from(&a.task));
    if let Some(out) = &a.out {
        let inputs: Vec<PathBuf> = [&task_path, &a.task_config, &a.model.tokenizer]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        crate::io::hf::check_out_dir(out, a.force, &loaded, &inputs)?;
    }
    let tasks: TaskSet = match &task_path {
        None => crate::tasks::ioi::generate(
            a.task_config.as_deref(),
            &loaded.tokenizer,
            a.samples,
            a.eval_samples,
            a.seed,
        )?,
        Some(p) => {
            if a.task_config.is_some() {
                fail!(Usage, "--task-config applies to --task ioi only");
            }
            crate::tasks::task::from_file(p, &loaded.tokenizer, a.samples, a.eval_samples, a.seed)?
        }
    };
    let model = &loaded.model;
    for p in tasks.attribution.iter().chain(&tasks.evaluation) {
        if p.ids.len() > model.dims.max_positions {
            fail!(
                Input,
                "a prompt of {} tokens is longer than the model allows ({} positions): {:?}",
                p.ids.len(),
                model.dims.max_positions,
                p.prompt
            );
        }
    }
    let start = std::time::Instant::now();
    let dense = task::evaluate(model, &tasks.evaluation)?;
    if let Some(mp) = &a.mask {
        return run_mask(&a, &loaded, &tasks, &dense, mp);
    }
    if dense.accuracy < MIN_DENSE_ACCURACY {
        fail!(
            Input,
            "the dense model does not solve the task: held-out accuracy {:.3} over {} prompts (mean logit difference {:.3}); a circuit needs accuracy ≥ {MIN_DENSE_ACCURACY}",
            dense.accuracy,
            dense.prompts,
            dense.logit_diff
        );
    }
    let mut results: Vec<(CircuitMethod, Scope, SearchResult, f64, f64)> = Vec::new();
    let mut attr_runs = Vec::new();
    let ids: Vec<(&[u32], u32, u32)> = tasks
        .attribution
        .iter()
        .map(|p| (p.ids.as_slice(), p.target_id, p.foil_id))
        .collect();
    let ids_sha = super::sha256_json(&ids);
    for &m in &methods {
        let scope = match a.scope {
            Some(ScopeArg::Row) => Scope::Row,
            Some(ScopeArg::Global) => Scope::Global,
            None => m.default_scope(),
        };
        let t0 = std::time::Instant::now();
        let pb = output::bar(tasks.attribution.len() as u64, m.name(), false);
        let run = a.resume.attr_run(
            a.out.as_deref(),
            &format!("{}-task", m.name()),
            &json!({"config": loaded.config_sha256, "dtype": super::dtype_name(req.dtype),
                    "method": m.name(), "granularity": granularity.name(), "layers": a.layers,
                    "ids_sha256": ids_sha}),
            a.force,
        );
        let ranking = circuit::rank_task(
            model,
            &tasks.attribution,
            m,
            granularity,
            scope,
            &selected,
            &run,
            |i, _| pb.set_position(i as u64),
        )?;
        attr_runs.push(run);
        pb.finish_and_clear();
        let t_rank = t0.elapsed().as_secs_f64();
        let pb = output::bar(0, &format!("{} search", m.name()), false);
        let res = circuit::search(
            model,
            &ranking,
            &tasks.evaluation,
            &dense,
            a.keep_metric,
            &selected,
            |i| pb.set_position(i as u64),
        )?;
        pb.finish_and_clear();
        results.push((m, scope, res, t_rank, t0.elapsed().as_secs_f64() - t_rank));
    }
    let seconds = start.elapsed().as_secs_f64();

    // Report, pictures, masks.
    let per_method: Vec<Value> = results
        .iter()
        .map(|(m, scope, r, tr, ts)| {
            let survivors = survivors(model, &r.selection.masks, &selected)?;
            Ok(json!({
                "method": m.name(),
                "scope": if granularity == Granularity::Weight { json!(scope) } else { Value::Null },
                "circuit": r.found,
                "curve": r.curve,
                "evaluations": r.curve.len(),
                "survivors": survivors,
                "mask_file": format!("mask-{}.safetensors", m.name()),
                "seconds_rank": tr,
                "seconds_search": ts,
            }))
        })
        .collect::<Result<_>>()?;
    let report = json!({
        "command": "circuit",
        "model": loaded.origin,
        "config_sha256": loaded.config_sha256,
        "task": tasks.info,
        "granularity": granularity,
        "layers_regex": a.layers,
        "keep_metric": a.keep_metric,
        "threshold_accuracy": a.keep_metric * dense.accuracy,
        "dense": dense,
        "methods": per_method,
        "examples": tasks.evaluation.iter().take(3).collect::<Vec<_>>(),
        "seconds": seconds,
        "peak_rss_bytes": crate::util::peak_rss(),
        "sparc3_version": env!("CARGO_PKG_VERSION"),
    });
    let curve_svg = svg::line_chart(&svg::LineChart {
        title: &format!(
            "{}: held-out accuracy against {} kept",
            tasks.info.name,
            unit_word(granularity)
        ),
        x_label: &format!("fraction of {} kept (log scale)", unit_word(granularity)),
        y_label: "held-out accuracy",
        log_x: true,
        log_y: false,
        hline: Some((
            a.keep_metric * dense.accuracy,
            format!("{:.0}% of dense", a.keep_metric * 100.0),
        )),
        series: results
            .iter()
            .map(|(m, _, r, _, _)| svg::Series {
                name: m.name().to_string(),
                points: std::iter::once((1.0, dense.accuracy))
                    .chain(r.curve.iter().map(|p| (p.kept_fraction, p.accuracy)))
                    .collect(),
                mark: Some((r.found.kept_fraction, r.found.accuracy)),
            })
            .collect(),
    });
    let out = a.out.as_ref().expect("required without --mask");
    crate::io::atomic_dir(out, a.force, |dir| {
        crate::io::write_in(
            dir,
            "circuit-report.json",
            &serde_json::to_vec_pretty(&report)?,
        )?;
        crate::io::write_in(dir, "curve.svg", curve_svg.as_bytes())?;
        for (m, _, r, _, _) in &results {
            crate::io::write_in(
                dir,
                &format!("mask-{}.safetensors", m.name()),
                &mask::to_bytes(model, &r.selection.masks)?,
            )?;
            let map = map_svg(model, &r.selection.masks, granularity, m.name())?;
            crate::io::write_in(dir, &format!("map-{}.svg", m.name()), map.as_bytes())?;
            if a.save_model {
                let sub = dir.join(format!("model-{}", m.name()));
                std::fs::create_dir(&sub)?;
                let pruned = circuit::pruned(model, &r.selection.masks)?;
                crate::io::hf::write_contents(&loaded, &pruned, &sub, None, &[])?;
            }
        }
        Ok(())
    })?;
    for c in attr_runs.iter().filter_map(|r| r.checkpoint.as_ref()) {
        c.remove();
    }
    if a.json {
        output::print_json(&report);
        return Ok(());
    }
    outln!("model        {}", loaded.origin.label());
    outln!(
        "task         {} ({} attribution prompts, {} held-out)",
        tasks.info.name,
        tasks.info.attribution_prompts,
        tasks.info.evaluation_prompts
    );
    outln!(
        "dense        accuracy {:.3}, logit diff {:.3}",
        dense.accuracy,
        dense.logit_diff
    );
    outln!(
        "circuit      smallest {} fraction keeping ≥ {:.0}% of dense accuracy ({:.3}):",
        unit_word(granularity),
        a.keep_metric * 100.0,
        a.keep_metric * dense.accuracy
    );
    for ((m, _, r, tr, ts), pm) in results
        .iter()
        .zip(report["methods"].as_array().expect("list"))
    {
        let f = &r.found;
        outln!(
            "  {:<10} kept {:.5} ({} {}; {:.5} of weights)  accuracy {:.3}  logit diff {:.3}  [{:.0} s + {:.0} s, {} evaluations]",
            m.name(),
            f.kept_fraction,
            f.kept_components,
            unit_word(granularity),
            f.kept_weight_fraction,
            f.accuracy,
            f.logit_diff,
            tr,
            ts,
            r.curve.len()
        );
        print_where(&pm["survivors"]);
    }
    outln!("time         {seconds:.1} s");
    outln!("wrote        {}", out.display());
    Ok(())
}

fn unit_word(g: Granularity) -> &'static str {
    match g {
        Granularity::Weight => "weights",
        Granularity::Neuron => "neurons",
        Granularity::Head => "heads",
    }
}

/// Evaluate a saved circuit mask on the held-out prompts.
fn run_mask(
    a: &CircuitArgs,
    loaded: &crate::source::Loaded,
    tasks: &TaskSet,
    dense: &TaskMetrics,
    path: &std::path::Path,
) -> Result<()> {
    let model = &loaded.model;
    let masks = mask::read(path, model)?;
    let m = task::evaluate(&circuit::pruned(model, &masks)?, &tasks.evaluation)?;
    let (kept, total) = masks.values().fold((0usize, 0usize), |(k, t), m| {
        (k + m.iter().filter(|&&x| !x).count(), t + m.len())
    });
    let r = json!({
        "command": "circuit --mask",
        "model": loaded.origin,
        "mask": path.display().to_string(),
        "task": tasks.info,
        "dense": dense,
        "circuit": m,
        "kept_weight_fraction_in_masked_layers": kept as f64 / total.max(1) as f64,
    });
    if a.json {
        output::print_json(&r);
    } else {
        outln!(
            "dense        accuracy {:.4}, logit diff {:.4}",
            dense.accuracy,
            dense.logit_diff
        );
        outln!(
            "circuit      accuracy {:.4}, logit diff {:.4}",
            m.accuracy,
            m.logit_diff
        );
        outln!(
            "kept         {:.5} of the masked layers' weights",
            kept as f64 / total.max(1) as f64
        );
    }
    Ok(())
}

fn kept_frac(m: Option<&Vec<bool>>, idx: impl Iterator<Item = usize>) -> f64 {
    let (mut k, mut n) = (0usize, 0usize);
    for i in idx {
        n += 1;
        if !m.is_some_and(|m| m[i]) {
            k += 1;
        }
    }
    k as f64 / n.max(1) as f64
}

/// Kept fraction of each head's `o` columns in one block.
fn heads_kept(b: &crate::model::Block, masks: &HashMap<String, Vec<bool>>) -> Result<Vec<f64>> {
    let o = &b.attn.o;
    let (rows, cols) = o.weight.dims2()?;
    let d = b.attn.head_dim;
    let om = masks.get(&o.name);
    Ok((0..b.attn.n_heads)
        .map(|h| {
            kept_frac(
                om,
                (0..rows).flat_map(move |r| (h * d..(h + 1) * d).map(move |c| r * cols + c)),
            )
        })
        .collect())
}

/// Whether each MLP neuron of one block keeps any weight of its `down`/`fc2` column.
fn neurons_alive(b: &crate::model::Block, masks: &HashMap<String, Vec<bool>>) -> Result<Vec<bool>> {
    let (_, down) = b.neuron_layers();
    let (rows, cols) = down.weight.dims2()?;
    let dm = masks.get(&down.name);
    Ok((0..cols)
        .map(|j| kept_frac(dm, (0..rows).map(|r| r * cols + j)) > 0.0)
        .collect())
}

/// Where the circuit lives: kept fraction per layer, per head (of its `o` columns) and per
/// neuron (of its `down`/`fc2` column).
fn survivors(
    model: &DecoderModel,
    masks: &HashMap<String, Vec<bool>>,
    selected: &dyn Fn(&str) -> bool,
) -> Result<Value> {
    let mut layers = Vec::new();
    for l in model.linears() {
        if selected(&l.name) {
            layers.push(json!({
                "layer": l.name,
                "kept": kept_frac(masks.get(&l.name), 0..l.weight.elem_count()),
            }));
        }
    }
    let mut heads = Vec::new();
    let mut neurons = Vec::new();
    for (bi, b) in model.blocks.iter().enumerate() {
        heads.push(json!({"block": bi, "kept": heads_kept(b, masks)?}));
        let flags = neurons_alive(b, masks)?;
        let cols = flags.len();
        let alive: Vec<usize> = (0..cols).filter(|&j| flags[j]).collect();
        neurons.push(json!({"block": bi, "alive": alive.len(), "of": cols, "indices": if alive.len() < cols { json!(alive) } else { Value::Null }}));
    }
    Ok(json!({"layers": layers, "heads": heads, "neurons": neurons}))
}

fn print_where(s: &Value) {
    let mut heads: Vec<(f64, String)> = Vec::new();
    for b in s["heads"].as_array().into_iter().flatten() {
        let bi = b["block"].as_u64().unwrap_or(0);
        for (h, k) in b["kept"].as_array().into_iter().flatten().enumerate() {
            heads.push((k.as_f64().unwrap_or(0.0), format!("L{bi}.H{h}")));
        }
    }
    let binary = heads.iter().all(|h| h.0 == 0.0 || h.0 == 1.0);
    let all_heads = heads.iter().all(|h| h.0 >= 1.0);
    if binary && !all_heads {
        // Whole heads removed: list, per layer, the heads that survive.
        let mut per: Vec<String> = Vec::new();
        for b in s["heads"].as_array().into_iter().flatten() {
            let bi = b["block"].as_u64().unwrap_or(0);
            let kept: Vec<String> = b["kept"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .filter(|(_, k)| k.as_f64() == Some(1.0))
                .map(|(h, _)| h.to_string())
                .collect();
            per.push(format!(
                "L{bi}:{}",
                if kept.is_empty() {
                    "-".into()
                } else {
                    kept.join(",")
                }
            ));
        }
        outln!("             heads kept: {}", per.join(" "));
    }
    let mut neurons: Vec<String> = Vec::new();
    for b in s["neurons"].as_array().into_iter().flatten() {
        if b["alive"] != b["of"] {
            neurons.push(format!("L{}:{}", b["block"], b["alive"]));
        }
    }
    if !neurons.is_empty() {
        outln!(
            "             neurons alive per layer: {}",
            neurons.join(" ")
        );
    }
    heads.sort_by(|a, b| b.0.total_cmp(&a.0));
    if !binary && !all_heads {
        let top: Vec<String> = heads
            .iter()
            .take(12)
            .filter(|h| h.0 > 0.0)
            .map(|h| format!("{} {:.2}", h.1, h.0))
            .collect();
        outln!("             heads kept most: {}", top.join(", "));
    }
    let mut layers: Vec<(f64, String)> = s["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                l["kept"].as_f64().unwrap_or(0.0),
                l["layer"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    layers.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top: Vec<String> = layers
        .iter()
        .take(6)
        .map(|l| format!("{} {:.3}", l.1, l.0))
        .collect();
    outln!("             layers kept most: {}", top.join(", "));
}

/// Layer × component picture of what survives.
fn map_svg(
    model: &DecoderModel,
    masks: &HashMap<String, Vec<bool>>,
    g: Granularity,
    method: &str,
) -> Result<String> {
    let rows: Vec<String> = (0..model.blocks.len()).map(|i| format!("L{i}")).collect();
    let (cols, values): (Vec<String>, Vec<Vec<f64>>) = match g {
        Granularity::Weight => {
            let cols: Vec<String> = model.blocks[0]
                .linears()
                .iter()
                .map(|l| l.name.rsplit('.').next().unwrap_or(&l.name).to_string())
                .collect();
            let vals = model
                .blocks
                .iter()
                .map(|b| {
                    b.linears()
                        .iter()
                        .map(|l| kept_frac(masks.get(&l.name), 0..l.weight.elem_count()))
                        .collect()
                })
                .collect();
            (cols, vals)
        }
        Granularity::Head => {
            let n = model.blocks[0].attn.n_heads;
            let vals = model
                .blocks
                .iter()
                .map(|b| heads_kept(b, masks))
                .collect::<Result<_>>()?;
            ((0..n).map(|h| format!("H{h}")).collect(), vals)
        }
        Granularity::Neuron => {
            const BINS: usize = 32;
            let vals = model
                .blocks
                .iter()
                .map(|b| {
                    let alive: Vec<f64> = neurons_alive(b, masks)?
                        .into_iter()
                        .map(|x| x as u8 as f64)
                        .collect();
                    let per = alive.len().div_ceil(BINS).max(1);
                    Ok(alive
                        .chunks(per)
                        .map(|ch| ch.iter().sum::<f64>() / ch.len() as f64)
                        .collect())
                })
                .collect::<Result<_>>()?;
            ((0..BINS).map(|i| format!("{i}")).collect(), vals)
        }
    };
    Ok(svg::heatmap(&svg::HeatMap {
        title: &format!(
            "{method}: fraction kept per layer and {}",
            match g {
                Granularity::Weight => "linear",
                Granularity::Head => "head",
                Granularity::Neuron => "neuron bin",
            }
        ),
        rows,
        cols,
        values,
        legend: "kept",
    }))
}
