//! `sparc3 correct`: flags → `jobs::correct::Config`; writes the corrected model, masks,
//! report and chart, prints the sweep table.

use super::args::{EvalArgs, ModelArgs, OutArgs, ResumeArgs};
use super::output::{print_json, Bar};
use super::values::{self, one_of};
use crate::eval::behaviour::Behaviour;
use crate::fail;
use crate::jobs::correct::{self, setup, Amount, Config, Explain, Objective};
use crate::prune::method::Method;
use crate::prune::ranking::Criterion;
use crate::prune::structured::Granularity;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CorrectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Undesired behaviour: JSONL with `prompt` and optional `continuation` (strings or
    /// RealToxicityPrompts objects with `text`), or plain text with one prompt per line.
    #[arg(long)]
    pub toxic_set: PathBuf,
    /// General text (plain, or JSONL `text` records). Default: the built-in calibration text.
    #[arg(long)]
    pub general_set: Option<PathBuf>,
    /// Windows sampled from the general set.
    #[arg(long, default_value_t = 128)]
    pub general_samples: usize,
    /// Tokens per general window.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// At most this many undesired prompts attributed (default: the whole attribution side).
    #[arg(long)]
    pub samples: Option<usize>,
    #[arg(long, default_value = "neuron", value_parser = one_of(&[Granularity::Neuron, Granularity::Weight]))]
    pub granularity: Granularity,
    /// Only prune linear layers whose name matches this regex (neurons: the layer reading them).
    #[arg(long)]
    pub layers: Option<String>,
    /// Components to remove; a comma-separated list sweeps (e.g. 10,30,100,300).
    #[arg(long, value_delimiter = ',', conflicts_with = "ratio")]
    pub count: Vec<usize>,
    /// Fraction of components to remove (instead of --count); a list sweeps.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub ratio: Vec<f64>,
    /// Fraction of the undesired set held out for evaluation.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub holdout: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scores, comma-separated (one sweep each; the first decides the written model).
    #[arg(long, value_delimiter = ',', default_value = "lrp", value_parser = one_of(Method::RANK))]
    pub method: Vec<Method>,
    /// What the undesired relevance explains.
    #[arg(long, value_enum, default_value = "continuation")]
    pub explain: Explain,
    /// What relevance explains on the two sets, and how it is summed (LRP and gradient).
    #[arg(long, value_enum, default_value = "logit")]
    pub objective: Objective,
    /// How the two sets' normalised scores are combined; a comma-separated list sweeps each
    /// from the same attribution.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "difference")]
    pub criterion: Vec<Criterion>,
    /// The ratio criterion's smoothing δ, as a fraction of the mean general share: smaller
    /// removes components general text barely uses (less perplexity and less effect per
    /// component), larger favours a large undesired share.
    #[arg(long, default_value_t = crate::prune::ranking::RATIO_SMOOTHING)]
    pub ratio_smoothing: f64,
    /// Word list flagging undesired text (default: built-in configs/lexicon-en.txt).
    #[arg(long)]
    pub lexicon: Option<PathBuf>,
    /// At most this many held-out prompts evaluated (default: the whole held-out side).
    #[arg(long)]
    pub eval_prompts: Option<usize>,
    /// Sampled continuations per held-out prompt.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Tokens per sampled or greedy continuation.
    #[arg(long, default_value_t = 20)]
    pub new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Longest given continuation used (tokens).
    #[arg(long, default_value_t = 64)]
    pub continuation_tokens: usize,
    #[command(flatten)]
    pub eval: EvalArgs,
    /// The written model: the sweep point with the lowest flagged-sample rate whose perplexity
    /// rises by at most this fraction.
    #[arg(long, default_value_t = 0.01)]
    pub max_ppl_rise: f64,
    /// Evaluate a saved correction mask instead of attributing.
    #[arg(long, conflicts_with = "out")]
    pub mask: Option<PathBuf>,
    /// Output directory: the corrected model (HF layout), masks, report, SVG.
    #[arg(long, required_unless_present = "mask")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub resume: ResumeArgs,
    #[command(flatten)]
    pub output: OutArgs,
}

impl CorrectArgs {
    fn check(&self) -> Result<()> {
        if self.k == 0 || self.new_tokens == 0 {
            fail!(Usage, "--k and --new-tokens must be at least 1");
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            fail!(Usage, "--temperature must be ≥ 0, got {}", self.temperature);
        }
        if self.ratio.iter().any(|r| !(*r > 0.0 && *r < 1.0)) {
            fail!(Usage, "--ratio values must be in (0, 1)");
        }
        if self.count.contains(&0) {
            fail!(Usage, "--count values must be at least 1");
        }
        if self.general_samples == 0 || self.samples == Some(0) || self.eval_prompts == Some(0) {
            fail!(
                Usage,
                "--samples, --general-samples and --eval-prompts must be at least 1"
            );
        }
        if self.max_ppl_rise.is_nan() || self.max_ppl_rise < 0.0 {
            fail!(Usage, "--max-ppl-rise must be ≥ 0");
        }
        if !(self.ratio_smoothing > 0.0 && self.ratio_smoothing.is_finite()) {
            fail!(
                Usage,
                "--ratio-smoothing must be a positive number, got {}",
                self.ratio_smoothing
            );
        }
        Ok(())
    }

    fn config(&self) -> Result<Config> {
        self.check()?;
        let resume = self.resume.config()?;
        let amount = match (&self.ratio[..], &self.count[..]) {
            ([_, ..], _) => Amount::Ratios(self.ratio.clone()),
            (_, [_, ..]) => Amount::Counts(self.count.clone()),
            _ => Amount::Default,
        };
        Ok(Config {
            toxic_set: self.toxic_set.clone(),
            general_set: self.general_set.clone(),
            general_samples: self.general_samples,
            seq_len: self.seq_len,
            samples: self.samples,
            granularity: self.granularity,
            layers: values::parse_layers(&self.layers)?,
            amount,
            holdout: self.holdout,
            seed: self.seed,
            methods: self.method.clone(),
            explain: self.explain,
            objective: self.objective,
            criteria: self.criterion.clone(),
            ratio_smoothing: self.ratio_smoothing,
            lexicon: self.lexicon.clone(),
            eval_prompts: self.eval_prompts,
            k: self.k,
            new_tokens: self.new_tokens,
            temperature: self.temperature,
            continuation_tokens: self.continuation_tokens,
            eval: self.eval.config(),
            max_ppl_rise: self.max_ppl_rise,
            resume,
            out: self.out.clone(),
            force_memory: self.output.force,
        })
    }

    fn inputs(&self) -> Vec<PathBuf> {
        [
            Some(&self.toxic_set),
            self.general_set.as_ref(),
            self.lexicon.as_ref(),
            self.eval.eval.as_ref(),
            self.model.tokenizer.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

pub fn run(a: CorrectArgs) -> Result<()> {
    super::set_threads(a.model.threads)?;
    let cfg = a.config()?;
    let inputs = setup::read_inputs(&cfg)?;
    let loaded = a.model.load()?;
    let force = a.output.force;
    if let Some(out) = &a.out {
        crate::io::hf::check_out(out, force, loaded.origin.dir(), &a.inputs())?;
    }
    let bar = Bar::default();
    let prep = setup::prepare(&loaded, &cfg, inputs, &bar)?;
    if let Some(mp) = &a.mask {
        let r = correct::evaluate_mask(&loaded, &cfg, &prep, mp, &bar)?;
        if a.output.json {
            print_json(&r);
        } else {
            super::tables::print_table(&r.dense, &[("mask", 0, &r.corrected)]);
        }
        return Ok(());
    }
    let o = correct::run(&loaded, &cfg, &prep, &bar)?;
    if o.over_budget {
        eprintln!(
            "warning: no --count kept perplexity within +{:.1}%; writing the smallest ({})",
            cfg.max_ppl_rise * 100.0,
            o.report.written.count
        );
    }
    let out = a.out.as_ref().expect("required without --mask");
    let contents = crate::jobs::model_contents(&loaded, &o.model);
    crate::io::hf::write(&contents, out, force, None, &o.files)?;
    crate::jobs::remove_checkpoints(&o.checkpoints);
    if a.output.json {
        print_json(&o.report);
        return Ok(());
    }
    let r = &o.report;
    let rows: Vec<(&str, usize, &Behaviour)> = r
        .sweeps
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .map(move |p| (s.label.as_str(), p.count, &p.behaviour))
        })
        .collect();
    super::tables::print_table(&r.dense, &rows);
    let w = &r.written;
    outln!(
        "wrote {} ({} {} −{} {}), {:.0} s",
        out.display(),
        w.method.name(),
        w.criterion.name(),
        w.count,
        cfg.granularity.name(),
        r.provenance.seconds
    );
    Ok(())
}
