//! `compress`: prune a model to a target sparsity and evaluate it before and after.

pub mod engine;

use super::prepare::{Prepared, PruneProtocol, PruneSetup};
use super::{Artefact, Progress, Provenance, Resume};
use crate::lrp::checkpoint::Checkpoint;
use crate::lrp::file::RelevanceReader;
use crate::prune::mask::Scope;
use crate::prune::method::Method;
use crate::source::Loaded;
use anyhow::Result;
use engine::CompressJob;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What happens to the surviving weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Update {
    /// Zero the removed weights, change nothing else.
    None,
    /// Reconstruct the surviving weights with SparseGPT's OBS update (any method's mask).
    Obs,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub method: Method,
    /// Fraction of each group's weights to remove, in (0, 1).
    pub ratio: f64,
    pub prune: PruneSetup,
    pub update: Update,
    pub resume: Resume,
    /// The output location; the attribution's checkpoint is kept beside it.
    pub out: Option<PathBuf>,
    /// Also produce the removal mask.
    pub save_mask: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerSparsity {
    pub layer: String,
    pub sparsity: f64,
}

/// `sparc3-report.json` and `compress --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub method: Method,
    pub update: Update,
    pub scope: Scope,
    #[serde(flatten)]
    pub protocol: PruneProtocol,
    pub ratio_requested: f64,
    pub ratio_achieved_in_pruned_layers: f64,
    pub sparsity_all_linears: f64,
    pub sparsity_per_layer: Vec<LayerSparsity>,
    pub ppl_before: Option<f64>,
    pub ppl_after: Option<f64>,
    pub seconds_scores: f64,
    pub seconds_prune: f64,
}

/// The pruned model is the loaded one, pruned in place.
pub struct Outcome {
    pub report: Report,
    /// Files written beside the model: the report, and the mask when asked for.
    pub files: Vec<Artefact>,
    /// The attribution's checkpoint, to remove once the output is in place.
    pub checkpoint: Option<Checkpoint>,
}

pub const REPORT_FILE: &str = "sparc3-report.json";

pub fn run(loaded: &mut Loaded, cfg: &Config, progress: &dyn Progress) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let method = cfg.method;
    let scope = cfg.prune.scope.unwrap_or(method.compress_scope());
    let relevance = cfg.prune.open_scores()?;
    let needs_calib =
        (method.needs_calibration() && relevance.is_none()) || cfg.update == Update::Obs;
    let prep = Prepared::new(loaded, &cfg.prune.calib, &cfg.prune.eval, needs_calib)?;
    let before = prep.ppl(&loaded.model)?;
    let ckpt = checkpoint(loaded, cfg, &prep);
    release_dense(loaded);
    let model = &mut loaded.model;
    let label = cfg.prune.scores.as_ref().map(|p| p.display().to_string());
    let job = CompressJob {
        method,
        ratio: cfg.ratio,
        scope,
        pattern: cfg.prune.pattern,
        samples: prep.samples(),
        target: prep.target.clone(),
        aggregation: prep.aggregation,
        scores: relevance
            .as_ref()
            .map(|r| (r, label.clone().unwrap_or_default())),
        config_sha256: &loaded.config_sha256,
        layers: cfg.prune.layers.0.clone(),
        update_obs: cfg.update == Update::Obs,
        checkpoint: ckpt,
        resume: cfg.resume.resume,
        force_memory: cfg.prune.force_memory,
        keep_masks: cfg.save_mask,
        precomputed: None,
    };
    progress.stage(method.name(), 0);
    let t_prune = std::time::Instant::now();
    let res = engine::compress(model, &job, |what, i, n| {
        progress.message(what);
        progress.position(i as u64, Some(n as u64));
    })?;
    progress.done();
    if let (Some(r), Some(label)) = (&relevance, &label) {
        note_foreign_protocol(r, label, &prep, progress);
    }
    let seconds_prune = t_prune.elapsed().as_secs_f64();
    let after = prep.ppl(model)?;
    let (per_layer, overall) = crate::prune::sparsity(model)?;
    let mut files = Vec::new();
    if cfg.save_mask {
        files.push((
            "mask.safetensors".to_string(),
            crate::prune::mask::to_bytes(model, &res.masks)?,
        ));
    }
    let report = Report {
        provenance: Provenance::of(
            "compress",
            loaded,
            prep.data_refs_with(relevance.as_ref()),
            start,
        ),
        method,
        update: cfg.update,
        scope,
        protocol: prep.protocol(
            &cfg.prune.pattern,
            &cfg.prune.layers,
            cfg.prune.scores.as_ref().zip(relevance.as_ref()),
            true,
            before.as_ref().map(|b| b.windows),
        ),
        ratio_requested: cfg.ratio,
        ratio_achieved_in_pruned_layers: res.removed.0 as f64 / res.removed.1.max(1) as f64,
        sparsity_all_linears: overall,
        sparsity_per_layer: per_layer
            .into_iter()
            .map(|(layer, sparsity)| LayerSparsity { layer, sparsity })
            .collect(),
        ppl_before: before.as_ref().map(|b| b.ppl),
        ppl_after: after.as_ref().map(|b| b.ppl),
        seconds_scores: res.seconds_scores,
        seconds_prune,
    };
    files.insert(
        0,
        (REPORT_FILE.to_string(), serde_json::to_vec_pretty(&report)?),
    );
    Ok(Outcome {
        report,
        files,
        checkpoint: job.checkpoint,
    })
}

/// The model is pruned in place and the store lets go of the dense weights it shares with it,
/// so a large model is never held twice.
fn release_dense(loaded: &mut Loaded) {
    let names: Vec<String> = loaded
        .model
        .linears()
        .iter()
        .map(|l| format!("{}.weight", l.name))
        .collect();
    loaded.store.release(&names);
}

/// The fresh attribution's checkpoint beside the output, fingerprinted by what decides it.
fn checkpoint(loaded: &Loaded, cfg: &Config, prep: &Prepared) -> Option<Checkpoint> {
    let protocol = serde_json::json!({
        "config": loaded.config_sha256,
        "calibration": prep.calib.as_ref().map(|c| &c.info),
        "method": cfg.method.name(),
        "target": prep.target,
        "aggregation": prep.aggregation,
        "dtype": super::report::storage_dtype(loaded),
    });
    cfg.resume.beside(cfg.out.as_deref(), &protocol)
}

/// A reused relevance file explains another target or aggregation than a fresh attribution
/// would: it is used as it is, and the user is told.
fn note_foreign_protocol(r: &RelevanceReader, label: &str, prep: &Prepared, p: &dyn Progress) {
    let file_target = r.meta.target_name();
    if r.meta.aggregation != prep.aggregation || file_target != prep.target.name() {
        p.note(&format!(
            "note: {label} holds '{file_target}' relevance with '{}' aggregation, used as it is (a fresh attribution would use '{}' with '{}')",
            r.meta.aggregation.name(),
            prep.target.name(),
            prep.aggregation.name()
        ));
    }
}
