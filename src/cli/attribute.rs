//! `sparc3 attribute`: flags → `jobs::attribute::Config`; writes the relevance file.

use super::args::{ModelArgs, OutArgs, ResumeArgs};
use super::output::{print_json, Bar};
use super::values::{MemoryChoice, RuleKind, TargetKind};
use crate::fail;
use crate::jobs::attribute::{self, Config, Report};
use crate::lrp::{MemoryMode, Target};
use crate::relevance::accum::Aggregation;
use crate::relevance::rules::Rule;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

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
    pub target: TargetKind,
    /// Token id explained by `last` (default: the argmax) or the target of `logit-diff`.
    #[arg(long)]
    pub token: Option<u32>,
    /// Foil token id of `logit-diff`.
    #[arg(long)]
    pub foil: Option<u32>,
    #[arg(long, value_enum, default_value = "lrp")]
    pub rule: RuleKind,
    /// LRP-ε on the linear layers (the paper used 1e-6); default: ε → 0.
    #[arg(long)]
    pub epsilon: Option<f32>,
    /// How weight relevance is aggregated over tokens and samples.
    #[arg(long, value_enum, default_value = "abs")]
    pub aggregation: Aggregation,
    #[arg(long, value_enum, default_value = "auto")]
    pub memory: MemoryChoice,
    /// Passes over the data, each accumulating the per-weight relevance of one group of
    /// consecutive blocks: auto (as many as the memory plan needs, usually 1) or a number.
    /// The result is the same bit for bit.
    #[arg(long, default_value = "auto")]
    pub passes: String,
    /// weight: relevance of every weight; neuron or head: only the sums of MLP neurons and
    /// attention heads (both are written), with no per-weight buffer: memory is the weights
    /// plus a little.
    #[arg(long, value_enum, default_value = "weight")]
    pub granularity: crate::prune::structured::Granularity,
    /// Process only shard i of n (0-based, e.g. 2/8); merge the shards with `sparc3 merge`.
    #[arg(long)]
    pub shard: Option<String>,
    /// Output relevance file (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub resume: ResumeArgs,
    #[command(flatten)]
    pub output: OutArgs,
}

impl AttributeArgs {
    fn target(&self) -> Result<Target> {
        Ok(match self.target {
            TargetKind::NextToken => Target::NextToken,
            TargetKind::NextTokenLogprob => Target::NextTokenLogprob,
            TargetKind::Last => Target::Last { token: self.token },
            TargetKind::LogitDiff => match (self.token, self.foil) {
                (Some(t), Some(f)) => Target::LogitDiff { target: t, foil: f },
                _ => fail!(Usage, "--target logit-diff needs --token and --foil"),
            },
            TargetKind::Span => Target::Span {
                prompt_len: 1,
                logprob: false,
            },
        })
    }

    fn config(&self) -> Result<Config> {
        if let Some(e) = self.epsilon {
            if !(e.is_finite() && e >= 0.0) {
                fail!(Usage, "--epsilon must be a non-negative number");
            }
        }
        Ok(Config {
            data: self.data.clone(),
            samples: self.samples,
            seq_len: self.seq_len,
            seed: self.seed,
            target: self.target()?,
            rule: match self.rule {
                RuleKind::Lrp => Rule::Lrp {
                    epsilon: self.epsilon,
                },
                RuleKind::Grad => Rule::Grad,
            },
            aggregation: self.aggregation,
            memory: match self.memory {
                MemoryChoice::Auto => None,
                MemoryChoice::Store => Some(MemoryMode::Store),
                MemoryChoice::Recompute => Some(MemoryMode::Recompute),
            },
            shard: None,
            resume: self.resume.config()?,
            out: Some(self.out.clone()),
            force_memory: self.output.force,
            granularity: self.granularity,
            passes: match self.passes.as_str() {
                "auto" => None,
                s => match s.parse::<usize>() {
                    Ok(n) if n > 0 => Some(n),
                    _ => fail!(Usage, "--passes {s}: expected auto or a positive number"),
                },
            },
        })
    }
}

/// Every file the run reads: the model's tensors and directory, and the data.
fn inputs(loaded: &crate::source::Loaded, data: &Option<PathBuf>) -> Vec<PathBuf> {
    let mut inputs: Vec<PathBuf> = loaded
        .store
        .names()
        .filter_map(|n| loaded.store.peek(n))
        .map(|s| s.file.clone())
        .collect();
    inputs.sort();
    inputs.dedup();
    inputs.extend(data.iter().cloned());
    if let Some(dir) = loaded.origin.dir() {
        if let Ok(rd) = std::fs::read_dir(dir) {
            inputs.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    inputs
}

pub fn run(a: AttributeArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    let shard = a
        .shard
        .as_deref()
        .map(super::values::parse_shard)
        .transpose()?;
    let loaded = a.model.load()?;
    crate::io::check_output(&a.out, a.output.force, &inputs(&loaded, &a.data))?;
    let mut cfg = a.config()?;
    cfg.shard = shard;
    let o = attribute::run(&loaded, &cfg, &Bar::default())?;
    o.file.write(&a.out)?;
    crate::jobs::remove_checkpoints(&o.checkpoints);
    if o.restored > 0 && !a.output.json {
        eprintln!("resumed after {} samples from the checkpoint", o.restored);
    }
    if a.output.json {
        print_json(&o.report);
    } else {
        print(&o.report, &o.calibration, &a.out);
    }
    Ok(())
}

fn print(r: &Report, c: &crate::tasks::calib::CalibInfo, out: &std::path::Path) {
    let m = &r.meta;
    outln!("model        {}", m.model);
    outln!(
        "data         {} (sha256 {}, {})",
        c.file,
        &c.sha256[..16],
        c.recipe
    );
    outln!(
        "samples      {} of {} (seq_len {}, seed {})",
        m.samples,
        m.samples_total,
        m.seq_len,
        m.seed
    );
    outln!(
        "target/rule  {} / {} ({} aggregation)",
        m.target_name(),
        m.rule,
        m.aggregation.name(),
    );
    outln!("memory plan  {}", r.plan.why);
    outln!(
        "start R      {:.4} mean per sample; input relevance / start {:.3}",
        r.mean_start_relevance,
        r.mean_input_over_start
    );
    let seconds = r.seconds_per_sample * m.samples as f64;
    outln!(
        "time         {seconds:.2} s ({:.3} s per sample)",
        r.seconds_per_sample
    );
    outln!("wrote        {}", out.display());
}
