//! `sparc3 compress`: flags → `jobs::compress::Config`; writes the pruned model directory.

use super::args::{check_fraction, CalibArgs, EvalArgs, ModelArgs, OutArgs, ResumeArgs};
use super::output::{print_json, Bar};
use super::values::{self, one_of};
use crate::jobs::compress::{self, Config, Update};
use crate::jobs::prepare::PruneSetup;
use crate::prune::mask::{Pattern, Scope};
use crate::prune::method::Method;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Flags shared by `compress` and `sweep`: grouping, pattern, calibration, scores, layers and
/// the perplexity evaluation.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Grouping (default: the method's reference: magnitude per layer, SparseGPT per
    /// adaptive 128-column block, others per row).
    #[arg(long, value_enum)]
    pub scope: Option<Scope>,
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
    pub eval: EvalArgs,
}

impl PruneArgs {
    /// The shared settings; `force`: run past the memory guard.
    pub fn setup(&self, force: bool) -> Result<PruneSetup> {
        Ok(PruneSetup {
            scope: self.scope,
            pattern: Pattern::parse(&self.pattern)?,
            calib: self.calib.config(),
            scores: self.scores.clone(),
            layers: values::parse_layers(&self.layers)?,
            eval: self.eval.config(),
            force_memory: force,
        })
    }
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
}

#[derive(Args, Debug)]
pub struct CompressArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Fraction of each group's weights to remove, in (0, 1).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub ratio: f64,
    /// How weights are scored (lrp: AttnLRP relevance; gradient: |W ⊙ ∇W|; wanda:
    /// |W|·‖X_j‖₂ with block replay; magnitude: |W|; sparsegpt: OBS reconstruction).
    #[arg(long, default_value = "lrp", value_parser = one_of(Method::COMPRESS))]
    pub method: Method,
    #[command(flatten)]
    pub prune: PruneArgs,
    /// What happens to the surviving weights.
    #[arg(long, value_enum, default_value = "none")]
    pub update: Update,
    #[command(flatten)]
    pub resume: ResumeArgs,
    /// Output directory (HF layout).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the removal mask (`mask.safetensors`, 1 = removed).
    #[arg(long)]
    pub save_mask: bool,
    /// Output weight dtype (default: the input's).
    #[arg(long)]
    pub out_dtype: Option<String>,
    #[command(flatten)]
    pub output: OutArgs,
}

impl CompressArgs {
    fn config(&self) -> Result<Config> {
        check_fraction(self.ratio, "--ratio")?;
        Ok(Config {
            method: self.method,
            ratio: self.ratio,
            prune: self.prune.setup(self.output.force)?,
            update: self.update,
            resume: self.resume.config()?,
            out: Some(self.out.clone()),
            save_mask: self.save_mask,
        })
    }
}

pub fn run(a: CompressArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    let cfg = a.config()?;
    let out_dtype = a
        .out_dtype
        .as_deref()
        .map(|d| values::parse_dtype(d, "--out-dtype"))
        .transpose()?;
    let mut loaded = a.model.load()?;
    let force = a.output.force;
    let inputs = a.prune.inputs(&a.model);
    crate::io::hf::check_out(&a.out, force, loaded.origin.dir(), &inputs)?;
    let o = compress::run(&mut loaded, &cfg, &Bar::default())?;
    let contents = crate::jobs::model_contents(&loaded, &loaded.model);
    crate::io::hf::write(&contents, &a.out, force, out_dtype, &o.files)?;
    crate::jobs::remove_checkpoints(&o.checkpoint);
    if a.output.json {
        print_json(&o.report);
    } else {
        print(&o.report, &a.out);
    }
    Ok(())
}

fn print(r: &compress::Report, out: &std::path::Path) {
    let label = r.provenance.model.as_ref().map(|m| m.label());
    outln!("model        {}", label.unwrap_or_default());
    outln!(
        "method       {} ({:?} scope, {})",
        r.method.name(),
        r.scope,
        r.protocol.pattern
    );
    outln!(
        "sparsity     {:.4} of the pruned layers' weights ({:.4} of all linears)",
        r.ratio_achieved_in_pruned_layers,
        r.sparsity_all_linears
    );
    if let (Some(b), Some(af), Some(e)) = (r.ppl_before, r.ppl_after, &r.protocol.eval) {
        outln!(
            "perplexity   {b:.4} → {af:.4} ({} windows of {} tokens)",
            e.windows.unwrap_or(0),
            e.seq_len
        );
    }
    outln!("time         {:.1} s", r.seconds_prune);
    outln!("wrote        {}", out.display());
}
