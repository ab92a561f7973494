//! `sparc3 circuit`: flags → `jobs::circuit::Config`; writes the report, masks and pictures.

use super::args::{ModelArgs, OutArgs, ResumeArgs};
use super::output::{print_json, Bar};
use super::values::{self, one_of};
use crate::fail;
use crate::jobs::circuit::survivors::unit_word;
use crate::jobs::circuit::{self, Config, Outcome, Report, TaskSource};
use crate::prune::mask::Scope;
use crate::prune::method::Method;
use crate::prune::structured::Granularity;
use anyhow::Result;
use clap::Args;
use std::path::{Path, PathBuf};

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
    #[arg(long, value_delimiter = ',', default_value = "lrp", value_parser = one_of(Method::RANK))]
    pub method: Vec<Method>,
    #[arg(long, value_enum, default_value = "weight")]
    pub granularity: Granularity,
    /// Weight granularity only: grouping for every method (default: Wanda per row, the others
    /// global).
    #[arg(long, value_parser = one_of(&[Scope::Row, Scope::Global]))]
    pub scope: Option<Scope>,
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
    pub resume: ResumeArgs,
    /// Also write the pruned model(s) in HF layout (`model-<method>/`).
    #[arg(long)]
    pub save_model: bool,
    #[command(flatten)]
    pub output: OutArgs,
}

impl CircuitArgs {
    fn config(&self) -> Result<Config> {
        if !(self.keep_metric > 0.0 && self.keep_metric <= 1.0) {
            fail!(
                Usage,
                "--keep-metric must be in (0, 1], got {}",
                self.keep_metric
            );
        }
        if self.samples == 0 || self.eval_samples == 0 {
            fail!(Usage, "--samples and --eval-samples must be at least 1");
        }
        if self.scope.is_some() && self.granularity != Granularity::Weight {
            fail!(Usage, "--scope applies to --granularity weight only");
        }
        let task = match self.task.as_str() {
            "ioi" => TaskSource::Ioi {
                config: self.task_config.clone(),
            },
            p => TaskSource::File(PathBuf::from(p)),
        };
        Ok(Config {
            task,
            samples: self.samples,
            eval_samples: self.eval_samples,
            methods: self.method.clone(),
            granularity: self.granularity,
            scope: self.scope,
            layers: values::parse_layers(&self.layers)?,
            keep_metric: self.keep_metric,
            seed: self.seed,
            resume: self.resume.config()?,
            out: self.out.clone(),
            save_model: self.save_model,
            force_memory: self.output.force,
        })
    }
}

pub fn run(a: CircuitArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    let cfg = a.config()?;
    let loaded = a.model.load()?;
    let force = a.output.force;
    if let Some(out) = &a.out {
        let mut inputs = circuit::inputs(&cfg);
        inputs.extend(a.model.tokenizer.iter().cloned());
        crate::io::hf::check_out(out, force, loaded.origin.dir(), &inputs)?;
    }
    if a.task != "ioi" && a.task_config.is_some() {
        fail!(Usage, "--task-config applies to --task ioi only");
    }
    let prep = circuit::prepare(&loaded, &cfg)?;
    if let Some(mp) = &a.mask {
        let r = circuit::evaluate_mask(&loaded, &prep, mp)?;
        if a.output.json {
            print_json(&r);
        } else {
            outln!(
                "dense        accuracy {:.4}, logit diff {:.4}",
                r.dense.accuracy,
                r.dense.logit_diff
            );
            outln!(
                "circuit      accuracy {:.4}, logit diff {:.4}",
                r.circuit.accuracy,
                r.circuit.logit_diff
            );
            outln!(
                "kept         {:.5} of the masked layers' weights",
                r.kept_weight_fraction_in_masked_layers
            );
        }
        return Ok(());
    }
    let o = circuit::run(&loaded, &cfg, &prep, &Bar::default())?;
    let out = a.out.as_ref().expect("required without --mask");
    write(&loaded, &o, out, force)?;
    crate::jobs::remove_checkpoints(&o.checkpoints);
    if a.output.json {
        print_json(&o.report);
    } else {
        print(&o.report, out);
    }
    Ok(())
}

fn write(loaded: &crate::source::Loaded, o: &Outcome, out: &Path, force: bool) -> Result<()> {
    crate::util::fs::atomic_dir(out, force, |dir| {
        for (name, bytes) in &o.files {
            crate::util::fs::write_in(dir, name, bytes)?;
        }
        for (sub, model) in &o.models {
            let sub = dir.join(sub);
            std::fs::create_dir(&sub)?;
            let contents = crate::jobs::model_contents(loaded, model);
            crate::io::hf::write_into(&contents, &sub, None, &[])?;
        }
        Ok(())
    })
}

fn print(r: &Report, out: &Path) {
    let (d, unit) = (&r.dense, unit_word(r.granularity));
    let label = r.provenance.model.as_ref().map(|m| m.label());
    outln!("model        {}", label.unwrap_or_default());
    outln!(
        "task         {} ({} attribution prompts, {} held-out)",
        r.task.name,
        r.task.attribution_prompts,
        r.task.evaluation_prompts
    );
    outln!(
        "dense        accuracy {:.3}, logit diff {:.3}",
        d.accuracy,
        d.logit_diff
    );
    outln!(
        "circuit      smallest {unit} fraction keeping ≥ {:.0}% of dense accuracy ({:.3}):",
        r.keep_metric * 100.0,
        r.threshold_accuracy
    );
    for m in &r.methods {
        let f = &m.circuit;
        outln!(
            "  {:<10} kept {:.5} ({} {unit}; {:.5} of weights)  accuracy {:.3}  logit diff {:.3}  [{:.0} s + {:.0} s, {} evaluations]",
            m.method.name(),
            f.kept_fraction,
            f.kept_components,
            f.kept_weight_fraction,
            f.accuracy,
            f.logit_diff,
            m.seconds_rank,
            m.seconds_search,
            m.evaluations
        );
        super::tables::print_where(&m.survivors);
    }
    outln!("time         {:.1} s", r.provenance.seconds);
    outln!("wrote        {}", out.display());
}
