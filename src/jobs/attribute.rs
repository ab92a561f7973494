//! `attribute`: AttnLRP (or gradient) relevance of every prunable weight over calibration
//! samples, written as a relevance file; one shard of a larger run with `shard`.

use super::{DataRef, Progress, Provenance, Resume};
use crate::lrp::checkpoint::{run_samples_resumable, Checkpoint};
use crate::lrp::file::{RelMeta, RelevanceFile, TokenTable, FORMAT};
use crate::lrp::plan::Plan;
use crate::lrp::staged::{Output, Staged};
use crate::lrp::{self, MemoryMode, Target};
use crate::prune::structured::Granularity;
use crate::relevance::accum::{Accumulators, Aggregation};
use crate::relevance::rules::Rule;
use crate::source::Loaded;
use crate::tasks::calib::{self, Calib};
use crate::{fail, invalid};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct Config {
    /// Text, JSONL text records or JSONL ids records (None: the built-in text); JSONL
    /// prompt/continuation records for the span target.
    pub data: Option<PathBuf>,
    pub samples: usize,
    /// Tokens per sample (None: 512 or the model's limit).
    pub seq_len: Option<usize>,
    pub seed: u64,
    /// What the start relevance explains (for spans, each record's prompt length is filled in).
    pub target: Target,
    pub rule: Rule,
    pub aggregation: Aggregation,
    /// Store or recompute block internals (None: decided by the activations' size).
    pub memory: Option<MemoryMode>,
    /// Only shard `i` of `n`.
    pub shard: Option<(usize, usize)>,
    pub resume: Resume,
    /// The output file; the checkpoint is kept beside it.
    pub out: Option<PathBuf>,
    /// Run past the memory guard.
    pub force_memory: bool,
    /// Passes over the calibration set, each accumulating a group of consecutive blocks
    /// (None: as the memory plan decides).
    pub passes: Option<usize>,
    /// `weight`: per-weight relevance; `neuron`/`head`: only the unit sums (no per-weight
    /// buffer, the weight products skipped).
    pub granularity: Granularity,
}

/// `attribute --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub out: Option<PathBuf>,
    /// The relevance file's metadata (its whole protocol).
    pub meta: RelMeta,
    /// `store` or `recompute`.
    pub memory_mode: String,
    /// The memory plan (mode, block groups, sizes, and why).
    pub plan: Plan,
    /// The samples of this shard, `[first, end)`.
    pub samples_range: [usize; 2],
    pub seconds_per_sample: f64,
    pub mean_start_relevance: f64,
    /// Input relevance over start relevance (conservation; 1 for exact LRP).
    pub mean_input_over_start: f64,
}

pub struct Outcome {
    pub report: Report,
    pub file: Output,
    /// Every checkpoint the run may have left (one per block group).
    pub checkpoints: Vec<Checkpoint>,
    /// Samples taken over from a checkpoint.
    pub restored: usize,
    /// The calibration protocol (for printing).
    pub calibration: calib::CalibInfo,
}

pub fn run(loaded: &Loaded, cfg: &Config, progress: &dyn Progress) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let model = &loaded.model;
    let seq_len = cfg
        .seq_len
        .unwrap_or_else(|| super::prepare::defaults::attribution_seq_len(loaded));
    if seq_len > model.dims.max_positions {
        invalid!(
            SeqLen,
            "{seq_len} is larger than the model allows ({} positions)",
            model.dims.max_positions
        );
    }
    check_tokens(&cfg.target, model.dims.vocab as u32)?;
    let (calib, prompt_lens) = samples(loaded, cfg, seq_len)?;
    let (lo, hi) = match cfg.shard {
        Some((i, n)) => (
            i * calib.samples.len() / n,
            (i + 1) * calib.samples.len() / n,
        ),
        None => (0, calib.samples.len()),
    };
    let mine = &calib.samples[lo..hi];
    if mine.is_empty() {
        let (i, n) = cfg.shard.unwrap_or((0, 1));
        fail!(
            Usage,
            "shard {i} of {n} has no samples (only {} samples in all)",
            calib.samples.len()
        );
    }
    let avail = crate::util::mem_available();
    let per_weight = cfg.granularity == Granularity::Weight;
    let plan = lrp::plan::make(
        model,
        seq_len,
        cfg.memory,
        cfg.passes,
        avail,
        per_weight,
        cfg.force_memory,
    )?;
    if plan.groups.len() > 1 {
        // Said before the long run starts (it is in the report too, and printed at the end).
        progress.note(&format!("memory plan: {}", plan.why));
    }
    let mode = plan.mode;
    let target_of = |i: usize| match &prompt_lens {
        Some(l) => Target::Span {
            prompt_len: l[lo + i],
            logprob: false,
        },
        None => cfg.target.clone(),
    };
    let ckpt = checkpoint(loaded, cfg, &calib, (lo, hi), seq_len, mode);
    let meta = meta(loaded, cfg, &calib, seq_len, mine.len());
    let t0 = std::time::Instant::now();
    let run = Groups {
        model,
        samples: mine,
        target_of: &target_of,
        cfg,
        plan: &plan,
        ckpt: ckpt.as_ref(),
        progress,
    };
    let (file, tok_rel, starts, restored, checkpoints) = if plan.groups.len() == 1 {
        run.single(meta.clone(), lo)?
    } else {
        run.grouped(&meta, lo)?
    };
    let seconds = t0.elapsed().as_secs_f64();
    let (mean_start, mean_cons) = conservation(&tok_rel, &starts);
    let data = vec![DataRef::new(
        "calibration",
        &calib.info.file,
        &calib.info.sha256,
    )];
    let report = Report {
        provenance: Provenance::of("attribute", loaded, data, start),
        out: cfg.out.clone(),
        meta,
        memory_mode: mode_name(mode).into(),
        plan,
        samples_range: [lo, hi],
        seconds_per_sample: seconds / mine.len() as f64,
        mean_start_relevance: mean_start,
        mean_input_over_start: mean_cons,
    };
    Ok(Outcome {
        report,
        file,
        checkpoints,
        restored,
        calibration: calib.info,
    })
}

/// Per-sample token relevance and start values, samples restored from checkpoints, and the
/// checkpoints the run may have left.
type Ran = (Output, Vec<Vec<f32>>, Vec<f64>, usize, Vec<Checkpoint>);

/// One pass's sums, per-sample token relevance and start values, and samples restored.
type Pass = (Accumulators, Vec<Vec<f32>>, Vec<f64>, usize);

/// The passes of one attribution over its samples, as the memory plan groups the blocks.
struct Groups<'a> {
    model: &'a crate::model::DecoderModel,
    samples: &'a [Vec<u32>],
    target_of: &'a (dyn Fn(usize) -> Target + Sync),
    cfg: &'a Config,
    plan: &'a Plan,
    ckpt: Option<&'a Checkpoint>,
    progress: &'a dyn Progress,
}

impl Groups<'_> {
    /// One pass over the samples accumulating `blocks` (None: all), with its checkpoint.
    fn pass(
        &self,
        blocks: Option<std::ops::Range<usize>>,
        ckpt: Option<&Checkpoint>,
        label: &str,
    ) -> Result<Pass> {
        let mut acc = Accumulators::new(self.cfg.aggregation);
        acc.blocks = blocks;
        acc.per_weight = self.cfg.granularity == Granularity::Weight;
        self.progress.stage(label, self.samples.len() as u64);
        let (tok_rel, starts, restored) = run_samples_resumable(
            self.model,
            self.samples,
            self.target_of,
            self.cfg.rule,
            self.plan.mode,
            &mut acc,
            ckpt,
            self.cfg.resume.resume,
            |i| self.progress.position(i as u64, None),
        )?;
        self.progress.done();
        Ok((acc, tok_rel, starts, restored))
    }

    /// Every block in one pass; the file is made in memory from the accumulators.
    fn single(&self, meta: RelMeta, first: usize) -> Result<Ran> {
        let (acc, tok_rel, starts, restored) = self.pass(None, self.ckpt, "attributing")?;
        let table = TokenTable {
            first_index: first,
            ids: self.samples.to_vec(),
            relevance: tok_rel.clone(),
        };
        let file = RelevanceFile::from_accumulators(meta, self.model, acc, Some(table))?;
        let ckpts = self.ckpt.cloned().into_iter().collect();
        Ok((Output::Memory(file), tok_rel, starts, restored, ckpts))
    }

    /// One pass per block group, each group's means written to the staged file and freed as
    /// soon as it is done. Each group has its own checkpoint; a finished group's is kept (when
    /// checkpoints are written periodically) so that a resumed run skips it.
    fn grouped(&self, meta: &RelMeta, first: usize) -> Result<Ran> {
        let Some(out) = self.cfg.out.as_deref() else {
            fail!(Usage, "accumulating in block groups needs an output file");
        };
        let t = self.samples[0].len();
        let same = self.samples.iter().all(|s| s.len() == t);
        let tokens = same.then_some((self.samples.len(), t));
        let per_weight = self.cfg.granularity == Granularity::Weight;
        let mut staged = Staged::create(out, meta, self.model, per_weight, tokens)?;
        let n = self.plan.groups.len();
        let ckpts: Vec<Checkpoint> = (0..n)
            .filter_map(|k| self.ckpt.map(|c| c.for_group(k, n)))
            .collect();
        let (mut tokens, mut restored_any) = (None, 0);
        for (k, g) in self.plan.groups.iter().enumerate() {
            let label = format!(
                "attributing blocks {}-{} (pass {} of {n})",
                g.start,
                g.end - 1,
                k + 1
            );
            let (acc, tok_rel, starts, restored) =
                self.pass(Some(g.clone()), ckpts.get(k), &label)?;
            restored_any = restored_any.max(restored);
            if let (Some(c), true) = (ckpts.get(k), k + 1 < n) {
                c.save_final(&acc, &tok_rel, &starts)?;
            }
            staged.add_blocks(self.model, acc, g.clone())?;
            if g.start == 0 {
                tokens = Some((tok_rel, starts));
            }
        }
        let (tok_rel, starts) = tokens.expect("the first group holds block 0");
        let table = TokenTable {
            first_index: first,
            ids: self.samples.to_vec(),
            relevance: tok_rel.clone(),
        };
        staged.add_tokens(table)?;
        Ok((Output::Staged(staged), tok_rel, starts, restored_any, ckpts))
    }
}

pub fn mode_name(m: MemoryMode) -> &'static str {
    match m {
        MemoryMode::Store => "store",
        MemoryMode::Recompute => "recompute",
    }
}

/// Token ids named by the target must be in the vocabulary.
fn check_tokens(target: &Target, vocab: u32) -> Result<()> {
    let (token, foil) = match target {
        Target::Last { token } => (*token, None),
        Target::LogitDiff { target, foil } => (Some(*target), Some(*foil)),
        _ => (None, None),
    };
    if let Some(t) = token.filter(|&t| t >= vocab) {
        invalid!(Token, "{t} is outside the vocabulary (size {vocab})");
    }
    if let Some(f) = foil.filter(|&f| f >= vocab) {
        invalid!(Foil, "{f} is outside the vocabulary (size {vocab})");
    }
    Ok(())
}

/// The calibration samples (and, for spans, each record's prompt length), checked against the
/// vocabulary.
fn samples(loaded: &Loaded, cfg: &Config, seq_len: usize) -> Result<(Calib, Option<Vec<usize>>)> {
    let (calib, lens) = if matches!(cfg.target, Target::Span { .. }) {
        let Some(d) = cfg.data.as_deref() else {
            invalid!(
                Data,
                "is needed by the span target (prompt/continuation records)"
            );
        };
        let (samples, lens, info) = calib::spans(d, &loaded.tokenizer, cfg.samples, seq_len)?;
        let c = Calib {
            samples,
            info,
            lines: Vec::new(),
        };
        (c, Some(lens))
    } else {
        let c = calib::sample(
            cfg.data.as_deref(),
            crate::data::builtin_eval_text,
            &loaded.tokenizer,
            cfg.samples,
            seq_len,
            cfg.seed,
        )?;
        (c, None)
    };
    let vocab = loaded.model.dims.vocab as u32;
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
    Ok((calib, lens))
}

/// The checkpoint beside the output, fingerprinted by everything that decides the result.
fn checkpoint(
    loaded: &Loaded,
    cfg: &Config,
    calib: &Calib,
    range: (usize, usize),
    seq_len: usize,
    mode: MemoryMode,
) -> Option<Checkpoint> {
    let epsilon = match cfg.rule {
        Rule::Lrp { epsilon } => epsilon,
        Rule::Grad => None,
    };
    let protocol = serde_json::json!({
        "config": loaded.config_sha256,
        "data": calib.info.sha256,
        "recipe": calib.info.recipe,
        "samples_total": calib.samples.len(),
        "range": [range.0, range.1],
        "target": cfg.target,
        "rule": cfg.rule.name(),
        "epsilon": epsilon,
        "aggregation": cfg.aggregation,
        "seq_len": seq_len,
        "seed": cfg.seed,
        "dtype": super::report::storage_dtype(loaded),
        "memory": mode,
        "granularity": cfg.granularity,
    });
    cfg.resume.beside(cfg.out.as_deref(), &protocol)
}

fn meta(loaded: &Loaded, cfg: &Config, calib: &Calib, seq_len: usize, samples: usize) -> RelMeta {
    let (shards, shard_count) = match cfg.shard {
        Some((i, n)) => (vec![i], n),
        None => (vec![0], 1),
    };
    let info = &calib.info;
    RelMeta {
        format: FORMAT.into(),
        model: loaded.origin.label(),
        config_sha256: loaded.config_sha256.clone(),
        data_file: info.file.clone(),
        data_sha256: info.sha256.clone(),
        recipe: info.recipe.clone(),
        target: serde_json::to_string(&cfg.target).unwrap_or_default(),
        rule: cfg.rule.name().into(),
        epsilon: match cfg.rule {
            Rule::Lrp { epsilon } => epsilon,
            Rule::Grad => None,
        },
        aggregation: cfg.aggregation,
        seq_len,
        seed: cfg.seed,
        samples_total: calib.samples.len(),
        samples,
        shards,
        shard_count,
        sparc3_version: env!("CARGO_PKG_VERSION").into(),
        units_only: (cfg.granularity != Granularity::Weight).then_some(cfg.granularity),
    }
}

/// Mean start relevance per sample, and mean input relevance over start relevance.
fn conservation(tok_rel: &[Vec<f32>], starts: &[f64]) -> (f64, f64) {
    let ratios: Vec<f64> = tok_rel
        .iter()
        .zip(starts)
        .map(|(r, s)| r.iter().map(|&x| x as f64).sum::<f64>() / s)
        .collect();
    let mean_start = starts.iter().sum::<f64>() / starts.len() as f64;
    let mean_cons = ratios.iter().sum::<f64>() / ratios.len() as f64;
    (mean_start, mean_cons)
}
