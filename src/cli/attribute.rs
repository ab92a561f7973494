use super::{output, ModelArgs};
use crate::fail;
use crate::lrp::accum::{Accumulators, Aggregation};
use crate::lrp::checkpoint::{run_samples_resumable, Checkpoint};
use crate::lrp::file::{RelMeta, RelevanceFile, FORMAT};
use crate::lrp::rules::Rule;
use crate::lrp::{self, MemoryMode, Target};
use crate::tasks::calib;
use anyhow::Result;
use clap::{Args, ValueEnum};
use serde_json::json;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TargetArg {
    /// Every position explains the logit of the true next token.
    NextToken,
    /// Every position explains the log-probability of the true next token (the model's loss).
    NextTokenLogprob,
    /// The final position explains the argmax logit (or --token).
    Last,
    /// logit(--token) − logit(--foil) at the final position.
    LogitDiff,
    /// The logits of each record's continuation tokens after its prompt (JSONL records with
    /// "prompt" and "continuation").
    Span,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RuleArg {
    /// AttnLRP.
    Lrp,
    /// Plain gradient × weight.
    Grad,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MemoryArg {
    /// Store when the activations fit comfortably, recompute otherwise.
    Auto,
    /// Keep every block's internals from the forward pass (fastest).
    Store,
    /// Keep only block inputs; recompute a block's internals in the backward pass.
    Recompute,
}

#[derive(Args, Debug)]
pub struct AttributeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Calibration data: plain text, JSONL `text` records (Wanda's C4 recipe), or JSONL `ids`
    /// records used as is. Default: the built-in demo text.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Number of samples.
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Tokens per sample (default: 512, or the model's limit if smaller).
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// What the start relevance explains.
    #[arg(long, value_enum, default_value = "next-token")]
    pub target: TargetArg,
    /// Token id explained by `last` (default: the argmax) or the target of `logit-diff`.
    #[arg(long)]
    pub token: Option<u32>,
    /// Foil token id of `logit-diff`.
    #[arg(long)]
    pub foil: Option<u32>,
    #[arg(long, value_enum, default_value = "lrp")]
    pub rule: RuleArg,
    /// LRP-ε on the linear layers (the paper used 1e-6); default: ε → 0.
    #[arg(long)]
    pub epsilon: Option<f32>,
    /// How weight relevance is aggregated over tokens and samples.
    #[arg(long, value_enum, default_value = "abs")]
    pub aggregation: AggArg,
    #[arg(long, value_enum, default_value = "auto")]
    pub memory: MemoryArg,
    /// Process only shard i of n (0-based, e.g. 2/8); merge the shards with `sparc3 merge`.
    #[arg(long)]
    pub shard: Option<String>,
    /// Output relevance file (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing --out; also runs past the memory guard.
    #[arg(long)]
    pub force: bool,
    /// Save the accumulators every N samples to `<out>.ckpt` (also on SIGINT/SIGTERM).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Continue a killed run from `<out>.ckpt` (same model, data and flags); the result equals
    /// an uninterrupted run's.
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AggArg {
    /// Mean over samples of |R| (relevance summed over each sample's tokens)
    Abs,
    /// Mean over samples of signed R
    Signed,
    /// Mean over samples of Σ_t |R_t| (per-token |R|: no cancellation across positions)
    TokenAbs,
    /// Mean over samples of Σ_t R_t² (diagonal Fisher / OBD saliency with LRP gradients)
    TokenSq,
}

impl AggArg {
    pub fn aggregation(self) -> Aggregation {
        match self {
            AggArg::Abs => Aggregation::Abs,
            AggArg::Signed => Aggregation::Signed,
            AggArg::TokenAbs => Aggregation::TokenAbs,
            AggArg::TokenSq => Aggregation::TokenSq,
        }
    }
}

pub fn run(a: AttributeArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    let shard = a
        .shard
        .as_deref()
        .map(crate::lrp::parse_shard)
        .transpose()?;
    let req = a.model.request()?;
    let loaded = crate::source::load(&req)?;
    let mut inputs: Vec<PathBuf> = loaded
        .store
        .names()
        .filter_map(|n| loaded.store.peek(n))
        .map(|s| s.file.clone())
        .collect();
    inputs.sort();
    inputs.dedup();
    if let Some(d) = &a.data {
        inputs.push(d.clone());
    }
    // Every file of the model's own directory (config, tokenizer, ...) is an input too.
    if let Some(dir) = loaded.origin.dir() {
        if let Ok(rd) = std::fs::read_dir(dir) {
            inputs.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    crate::io::check_output(&a.out, a.force, &inputs)?;
    let model = &loaded.model;
    let seq_len = a.seq_len.unwrap_or(512.min(model.dims.max_positions));
    if seq_len > model.dims.max_positions {
        fail!(
            Usage,
            "--seq-len {seq_len} is larger than the model allows ({} positions)",
            model.dims.max_positions
        );
    }
    if let Some(e) = a.epsilon {
        if !(e.is_finite() && e >= 0.0) {
            fail!(Usage, "--epsilon must be a non-negative number");
        }
    }
    let vocab = model.dims.vocab as u32;
    for (flag, t) in [("--token", a.token), ("--foil", a.foil)] {
        if let Some(t) = t {
            if t >= vocab {
                fail!(Usage, "{flag} {t} is outside the vocabulary (size {vocab})");
            }
        }
    }
    let target = match a.target {
        TargetArg::NextToken => Target::NextToken,
        TargetArg::NextTokenLogprob => Target::NextTokenLogprob,
        TargetArg::Last => Target::Last { token: a.token },
        TargetArg::LogitDiff => match (a.token, a.foil) {
            (Some(t), Some(f)) => Target::LogitDiff { target: t, foil: f },
            _ => fail!(Usage, "--target logit-diff needs --token and --foil"),
        },
        TargetArg::Span => Target::Span {
            prompt_len: 1,
            logprob: false,
        },
    };
    let rule = match a.rule {
        RuleArg::Lrp => Rule::Lrp { epsilon: a.epsilon },
        RuleArg::Grad => Rule::Grad,
    };
    let aggregation = a.aggregation.aggregation();
    let (calib, prompt_lens) = if matches!(target, Target::Span { .. }) {
        let Some(d) = a.data.as_deref() else {
            fail!(
                Usage,
                "--target span needs --data with prompt/continuation records"
            );
        };
        let (samples, lens, info) = calib::spans(d, &loaded.tokenizer, a.samples, seq_len)?;
        (
            calib::Calib {
                samples,
                info,
                lines: Vec::new(),
            },
            Some(lens),
        )
    } else {
        let c = calib::sample(
            a.data.as_deref(),
            crate::data::builtin_eval_text,
            &loaded.tokenizer,
            a.samples,
            seq_len,
            a.seed,
        )?;
        (c, None)
    };
    for (i, smp) in calib.samples.iter().enumerate() {
        if let Some(&bad) = smp.iter().find(|&&x| x >= vocab) {
            let place = match calib.lines.get(i) {
                Some(l) => format!("line {l}"),
                None => format!("sample {}", i + 1),
            };
            fail!(
                Input,
                "{}: {place} has token id {bad}, outside the model's vocabulary (size {vocab})",
                calib.info.file
            );
        }
    }
    let (lo, hi, shards, count) = match shard {
        Some((i, n)) => (
            i * calib.samples.len() / n,
            (i + 1) * calib.samples.len() / n,
            vec![i],
            n,
        ),
        None => (0, calib.samples.len(), vec![0], 1),
    };
    let mine = &calib.samples[lo..hi];
    if mine.is_empty() {
        fail!(
            Usage,
            "shard {} of {count} has no samples (only {} samples in all)",
            shards[0],
            calib.samples.len()
        );
    }
    let mode = match a.memory {
        MemoryArg::Auto => lrp::auto_mode(model, seq_len),
        MemoryArg::Store => MemoryMode::Store,
        MemoryArg::Recompute => MemoryMode::Recompute,
    };
    crate::lrp::check_memory(model, seq_len, mode, true, a.force)?;
    let mut acc = Accumulators::new(aggregation);
    let pb = output::bar(mine.len() as u64, "attributing", false);
    let start = std::time::Instant::now();
    let target_of = |i: usize| match &prompt_lens {
        Some(l) => Target::Span {
            prompt_len: l[lo + i],
            logprob: false,
        },
        None => target.clone(),
    };
    if a.checkpoint_every == Some(0) {
        fail!(Usage, "--checkpoint-every must be at least 1");
    }
    let fingerprint = crate::source::sha256_hex(
        serde_json::to_string(&json!({
            "config": loaded.config_sha256,
            "data": calib.info.sha256,
            "recipe": calib.info.recipe,
            "samples_total": calib.samples.len(),
            "range": [lo, hi],
            "target": target,
            "rule": rule.name(),
            "epsilon": a.epsilon,
            "aggregation": aggregation,
            "seq_len": seq_len,
            "seed": a.seed,
            "dtype": super::dtype_name(req.dtype),
            "memory": mode,
        }))?
        .as_bytes(),
    );
    let ckpt = (a.checkpoint_every.is_some() || a.resume).then(|| Checkpoint {
        path: Checkpoint::path_for(&a.out),
        every: a.checkpoint_every.unwrap_or(0),
        fingerprint,
    });
    let (tok_rel, starts, restored) = run_samples_resumable(
        model,
        mine,
        target_of,
        rule,
        mode,
        &mut acc,
        ckpt.as_ref(),
        a.resume,
        |i| pb.set_position(i as u64),
    )?;
    if restored > 0 && !a.json {
        eprintln!("resumed after {restored} samples from the checkpoint");
    }
    pb.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let meta = RelMeta {
        format: FORMAT.into(),
        model: loaded.origin.label(),
        config_sha256: loaded.config_sha256.clone(),
        data_file: calib.info.file.clone(),
        data_sha256: calib.info.sha256.clone(),
        recipe: calib.info.recipe.into(),
        target: serde_json::to_string(&target)?,
        rule: rule.name().into(),
        epsilon: a.epsilon,
        aggregation,
        seq_len,
        seed: a.seed,
        samples_total: calib.samples.len(),
        samples: mine.len(),
        shards,
        shard_count: count,
        sparc3_version: env!("CARGO_PKG_VERSION").into(),
    };
    let file = RelevanceFile::from_accumulators(
        meta.clone(),
        model,
        &acc,
        Some(crate::lrp::file::TokenTable {
            first_index: lo,
            ids: mine.to_vec(),
            relevance: tok_rel.clone(),
        }),
    )?;
    file.write(&a.out)?;
    if let Some(c) = &ckpt {
        c.remove();
    }
    let conservation: Vec<f64> = tok_rel
        .iter()
        .zip(&starts)
        .map(|(r, s)| r.iter().map(|&x| x as f64).sum::<f64>() / s)
        .collect();
    let mean_start = starts.iter().sum::<f64>() / starts.len() as f64;
    let mean_cons = conservation.iter().sum::<f64>() / conservation.len() as f64;
    if a.json {
        output::print_json(&json!({
            "command": "attribute",
            "out": a.out,
            "meta": meta,
            "memory_mode": mode,
            "samples_range": [lo, hi],
            "seconds": seconds,
            "seconds_per_sample": seconds / mine.len() as f64,
            "mean_start_relevance": mean_start,
            "mean_input_over_start": mean_cons,
            "peak_rss_bytes": crate::util::peak_rss(),
        }));
    } else {
        outln!("model        {}", loaded.origin.label());
        outln!(
            "data         {} (sha256 {}, {})",
            calib.info.file,
            &calib.info.sha256[..16],
            calib.info.recipe
        );
        outln!(
            "samples      {} of {} (seq_len {seq_len}, seed {})",
            mine.len(),
            calib.samples.len(),
            a.seed
        );
        outln!(
            "target/rule  {} / {} ({} aggregation, {:?} memory)",
            target.name(),
            rule.name(),
            aggregation.name(),
            mode
        );
        outln!(
            "start R      {mean_start:.4} mean per sample; input relevance / start {mean_cons:.3}"
        );
        outln!(
            "time         {seconds:.2} s ({:.3} s per sample)",
            seconds / mine.len() as f64
        );
        outln!("wrote        {}", a.out.display());
    }
    Ok(())
}
