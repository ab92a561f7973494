use super::{output, ModelArgs};
use crate::fail;
use crate::lrp::accum::Aggregation;
use crate::lrp::file::RelevanceFile;
use crate::lrp::Target;
use crate::prune::compress::{self, CompressJob, Method};
use crate::prune::mask::{Pattern, Scope};
use crate::tasks::calib;
use anyhow::Result;
use clap::{Args, ValueEnum};
use serde_json::json;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MethodArg {
    /// AttnLRP relevance (the paper's method).
    Lrp,
    /// |W ⊙ ∇W| with the plain gradient.
    Gradient,
    /// |W|·‖X_j‖₂ with block-by-block replay (Sun et al.).
    Wanda,
    /// |W|.
    Magnitude,
    /// SparseGPT: OBS reconstruction with adaptive masks per 128-column block.
    Sparsegpt,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScopeArg {
    Row,
    Layer,
    Global,
    /// SparseGPT's adaptive 128-column blocks.
    Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UpdateArg {
    /// Zero the removed weights, change nothing else.
    None,
    /// Reconstruct the surviving weights with SparseGPT's OBS update (any method's mask).
    Obs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CompressTarget {
    /// Every position explains the logit of the true next token.
    NextToken,
    /// Every position explains the log-probability of the true next token (the model's loss).
    NextTokenLogprob,
    /// The final position explains its argmax logit.
    Last,
}

/// Calibration flags shared by `compress` and `sweep`.
#[derive(Args, Debug)]
pub struct CalibArgs {
    /// Calibration data (text, JSONL text records, or JSONL ids records). Default: built-in text.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Tokens per calibration sample (default 512, or the model's limit; 256 for the demo).
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// What LRP/gradient relevance explains (next-token-logprob measured best for compression;
    /// README).
    #[arg(long, value_enum, default_value = "next-token-logprob")]
    pub target: CompressTarget,
    /// How LRP/gradient weight relevance is aggregated over tokens and samples (token-sq with
    /// the log-probability target, an empirical Fisher, measured best for compression; README).
    #[arg(long, value_enum, default_value = "token-sq")]
    pub aggregation: super::attribute::AggArg,
}

/// Perplexity flags shared by `compress` and `sweep`.
#[derive(Args, Debug)]
pub struct PplArgs {
    /// Perplexity text evaluated before and after (default for the built-in model: its
    /// held-out text).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Windows of --eval-seq-len tokens to evaluate (default: all).
    #[arg(long)]
    pub eval_windows: Option<usize>,
    #[arg(long)]
    pub eval_seq_len: Option<usize>,
}

impl MethodArg {
    pub fn method(self) -> Method {
        match self {
            MethodArg::Lrp => Method::Lrp,
            MethodArg::Gradient => Method::Gradient,
            MethodArg::Wanda => Method::Wanda,
            MethodArg::Magnitude => Method::Magnitude,
            MethodArg::Sparsegpt => Method::SparseGpt,
        }
    }
}

impl ScopeArg {
    pub fn scope(self) -> Scope {
        match self {
            ScopeArg::Row => Scope::Row,
            ScopeArg::Layer => Scope::Layer,
            ScopeArg::Global => Scope::Global,
            ScopeArg::Block => Scope::Block,
        }
    }
}

/// What `compress` and `sweep` prepare before pruning: calibration samples (when needed) and
/// the evaluation text with its dense perplexity.
pub struct Prepared {
    pub calib: Option<calib::Calib>,
    pub eval: Option<(crate::data::TextSource, Vec<u32>)>,
    pub eval_seq: usize,
    pub eval_windows: Option<usize>,
    pub target: Target,
    pub aggregation: Aggregation,
}

impl Prepared {
    pub fn new(
        loaded: &crate::source::Loaded,
        c: &CalibArgs,
        e: &PplArgs,
        needs_calib: bool,
    ) -> Result<Self> {
        let builtin = matches!(loaded.origin, crate::source::Origin::Builtin { .. });
        let model_max = loaded.model.dims.max_positions;
        let seq_len = c
            .seq_len
            .unwrap_or(if builtin { 256 } else { 512.min(model_max) });
        if seq_len > model_max {
            fail!(
                Usage,
                "--seq-len {seq_len} is larger than the model allows ({model_max} positions)"
            );
        }
        let calib = if needs_calib {
            Some(calib::sample(
                c.calib.as_deref(),
                crate::data::builtin_eval_text,
                &loaded.tokenizer,
                c.samples,
                seq_len,
                c.seed,
            )?)
        } else {
            None
        };
        // Evaluation text: --eval, or the built-in held-out text for the built-in model.
        let eval_src = match (&e.eval, builtin) {
            (Some(p), _) => Some(crate::data::read_text(p)?),
            (None, true) => Some(crate::data::builtin_eval_text()),
            (None, false) => None,
        };
        let eval_seq = e
            .eval_seq_len
            .unwrap_or(if builtin { 256 } else { 512.min(model_max) });
        if eval_seq > model_max {
            fail!(
                Usage,
                "--eval-seq-len {eval_seq} is larger than the model allows ({model_max} positions)"
            );
        }
        let eval_windows = e.eval_windows.or(if builtin && e.eval.is_none() {
            Some(64)
        } else {
            None
        });
        let eval = match eval_src {
            Some(s) => {
                let ids = crate::data::encode_plain(&loaded.tokenizer, &s.text)?;
                Some((s, ids))
            }
            None => None,
        };
        let target = match c.target {
            CompressTarget::NextToken => Target::NextToken,
            CompressTarget::NextTokenLogprob => Target::NextTokenLogprob,
            CompressTarget::Last => Target::Last { token: None },
        };
        Ok(Self {
            calib,
            eval,
            eval_seq,
            eval_windows,
            target,
            aggregation: c.aggregation.aggregation(),
        })
    }

    pub fn samples(&self) -> &[Vec<u32>] {
        self.calib.as_ref().map_or(&[], |c| c.samples.as_slice())
    }

    /// Perplexity on the evaluation text, if there is one.
    pub fn ppl(
        &self,
        model: &crate::model::DecoderModel,
    ) -> Result<Option<crate::eval::perplexity::PplResult>> {
        match &self.eval {
            Some((_, ids)) => Ok(Some(compress::ppl(
                model,
                ids,
                self.eval_seq,
                self.eval_windows,
            )?)),
            None => Ok(None),
        }
    }

    /// The evaluation protocol for reports.
    pub fn eval_info(&self, windows: Option<usize>) -> serde_json::Value {
        match &self.eval {
            Some((s, _)) => {
                json!({"file": s.label, "sha256": s.sha256, "seq_len": self.eval_seq, "windows": windows})
            }
            None => serde_json::Value::Null,
        }
    }
}

/// Flags shared by `compress` and `sweep`: grouping, pattern, calibration, scores, layers and
/// the perplexity evaluation.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Grouping (default: the method's reference: magnitude per layer, others per row).
    #[arg(long, value_enum)]
    pub scope: Option<ScopeArg>,
    /// unstructured, or N:M (remove N of every M consecutive inputs per row, e.g. 2:4; the
    /// ratio is then N/M).
    #[arg(long, default_value = "unstructured")]
    pub pattern: String,
    #[command(flatten)]
    pub calib: CalibArgs,
    /// Reuse a relevance file from `sparc3 attribute` (lrp or gradient) instead of attributing.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Only prune linear layers whose name matches this regex.
    #[arg(long)]
    pub layers: Option<String>,
    #[command(flatten)]
    pub eval: PplArgs,
}

impl PruneArgs {
    /// Every input file named on the command line (never to be overwritten by `--out`).
    pub fn inputs(&self, model: &ModelArgs) -> Vec<PathBuf> {
        [
            &self.calib.calib,
            &self.scores,
            &self.eval.eval,
            &model.tokenizer,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    pub fn relevance(&self) -> Result<Option<RelevanceFile>> {
        self.scores.as_deref().map(RelevanceFile::read).transpose()
    }
}

#[derive(Args, Debug)]
pub struct CompressArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Fraction of each group's weights to remove, in (0, 1).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub ratio: f64,
    #[arg(long, value_enum, default_value = "lrp")]
    pub method: MethodArg,
    #[command(flatten)]
    pub prune: PruneArgs,
    /// What happens to the surviving weights.
    #[arg(long, value_enum, default_value = "none")]
    pub update: UpdateArg,
    /// Save the attribution's accumulators every N samples to `<out>.ckpt` (also on a signal).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Continue a killed run's attribution from `<out>.ckpt`.
    #[arg(long)]
    pub resume: bool,
    /// Output directory (HF layout).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub force: bool,
    /// Also write the removal mask (`mask.safetensors`, 1 = removed).
    #[arg(long)]
    pub save_mask: bool,
    /// Output weight dtype (default: the input's).
    #[arg(long)]
    pub out_dtype: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CompressArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    if !(a.ratio > 0.0 && a.ratio < 1.0) {
        fail!(Usage, "--ratio must be in (0, 1), got {}", a.ratio);
    }
    let pattern = Pattern::parse(&a.prune.pattern)?;
    let out_dtype = a
        .out_dtype
        .as_deref()
        .map(|d| super::parse_dtype_flag(d, "--out-dtype"))
        .transpose()?;
    let layers = super::parse_layers(&a.prune.layers)?;
    let method = a.method.method();
    let scope = a
        .prune
        .scope
        .map_or(method.default_scope(), ScopeArg::scope);
    let req = a.model.request()?;
    let loaded = crate::source::load(&req)?;
    crate::io::hf::check_out_dir(&a.out, a.force, &loaded, &a.prune.inputs(&a.model))?;
    let relevance = a.prune.relevance()?;
    let prep = Prepared::new(
        &loaded,
        &a.prune.calib,
        &a.prune.eval,
        (method.needs_calibration() && relevance.is_none()) || a.update == UpdateArg::Obs,
    )?;
    let calib = &prep.calib;
    let mut model = loaded.model.clone();
    let before = prep.ppl(&model)?;
    let target = prep.target.clone();
    let samples = prep.samples();
    let pb = output::bar(0, method.name(), false);
    let start = std::time::Instant::now();
    let scores_label = a
        .prune
        .scores
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if a.checkpoint_every == Some(0) {
        fail!(Usage, "--checkpoint-every must be at least 1");
    }
    let checkpoint = (a.checkpoint_every.is_some() || a.resume).then(|| {
        let fingerprint = crate::source::sha256_hex(
            serde_json::to_string(&json!({
                "config": loaded.config_sha256,
                "calibration": calib.as_ref().map(|c| &c.info),
                "method": method.name(),
                "target": target,
                "aggregation": prep.aggregation,
                "dtype": super::dtype_name(req.dtype),
            }))
            .unwrap_or_default()
            .as_bytes(),
        );
        crate::lrp::checkpoint::Checkpoint {
            path: crate::lrp::checkpoint::Checkpoint::path_for(&a.out),
            every: a.checkpoint_every.unwrap_or(0),
            fingerprint,
        }
    });
    let job = CompressJob {
        method,
        ratio: a.ratio,
        scope,
        pattern,
        samples,
        target,
        aggregation: prep.aggregation,
        scores: relevance.as_ref().map(|r| (r, scores_label.clone())),
        config_sha256: &loaded.config_sha256,
        layers,
        update_obs: a.update == UpdateArg::Obs,
        checkpoint,
        resume: a.resume,
        force_memory: a.force,
        precomputed: None,
    };
    let res = compress::compress(&mut model, &job, |what, i, n| {
        pb.set_message(what.to_string());
        pb.set_length(n as u64);
        pb.set_position(i as u64);
    })?;
    pb.finish_and_clear();
    // After the job, so that a refused scores file gets its one error line only.
    if let Some(r) = relevance.as_ref() {
        let file_target = r.meta.target_name();
        if r.meta.aggregation != prep.aggregation || file_target != prep.target.name() {
            eprintln!(
                "note: {} holds '{}' relevance with '{}' aggregation, used as it is (a fresh attribution would use '{}' with '{}')",
                a.prune.scores.as_ref().map_or(String::new(), |p| p.display().to_string()),
                file_target,
                r.meta.aggregation.name(),
                prep.target.name(),
                prep.aggregation.name()
            );
        }
    }
    let prune_seconds = start.elapsed().as_secs_f64();
    let after = prep.ppl(&model)?;
    let (per_layer, overall) = crate::prune::sparsity(&model)?;
    let pruned_share: f64 = {
        let (mut z, mut n) = (0usize, 0usize);
        for (name, m) in &res.masks {
            z += m.iter().filter(|&&x| x).count();
            n += m.len();
            let _ = name;
        }
        z as f64 / n.max(1) as f64
    };
    let report = json!({
        "command": "compress",
        "model": loaded.origin,
        "config_sha256": loaded.config_sha256,
        "method": method.name(),
        "update": if a.update == UpdateArg::Obs { "obs" } else { "none" },
        "scope": scope,
        "pattern": pattern.name(),
        "ratio_requested": a.ratio,
        "ratio_achieved_in_pruned_layers": pruned_share,
        "sparsity_all_linears": overall,
        "sparsity_per_layer": per_layer.iter().map(|(n, s)| json!({"layer": n, "sparsity": s})).collect::<Vec<_>>(),
        "layers_regex": a.prune.layers,
        "calibration": calib.as_ref().map(|c| &c.info),
        "scores_file": a.prune.scores,
        // A reused relevance file's own protocol (data, samples, seq_len, seed, rule, shards).
        "scores_protocol": relevance.as_ref().map(|r| &r.meta),
        "target": relevance.as_ref().map_or(job.target.name().to_string(), |r| r.meta.target.clone()),
        "aggregation": relevance.as_ref().map_or(job.aggregation, |r| r.meta.aggregation),
        "eval": prep.eval_info(before.as_ref().map(|b| b.windows)),
        "ppl_before": before.as_ref().map(|b| b.ppl),
        "ppl_after": after.as_ref().map(|b| b.ppl),
        "seconds_scores": res.seconds_scores,
        "seconds_prune": prune_seconds,
        "peak_rss_bytes": crate::util::peak_rss(),
        "sparc3_version": env!("CARGO_PKG_VERSION"),
    });
    let mut files = vec![(
        "sparc3-report.json".to_string(),
        serde_json::to_vec_pretty(&report)?,
    )];
    if a.save_mask {
        files.push((
            "mask.safetensors".to_string(),
            crate::prune::mask::to_bytes(&model, &res.masks)?,
        ));
    }
    crate::io::hf::write_model(&loaded, &model, &a.out, a.force, out_dtype, &files)?;
    if let Some(c) = &job.checkpoint {
        c.remove();
    }
    if a.json {
        output::print_json(&report);
    } else {
        outln!("model        {}", loaded.origin.label());
        outln!(
            "method       {} ({:?} scope, {})",
            method.name(),
            scope,
            pattern.name()
        );
        outln!(
            "sparsity     {:.4} of the pruned layers' weights ({:.4} of all linears)",
            pruned_share,
            overall
        );
        if let (Some(b), Some(af)) = (&before, &after) {
            outln!(
                "perplexity   {:.4} → {:.4} ({} windows of {} tokens)",
                b.ppl,
                af.ppl,
                b.windows,
                prep.eval_seq
            );
        }
        outln!("time         {prune_seconds:.1} s");
        outln!("wrote        {}", a.out.display());
    }
    Ok(())
}
