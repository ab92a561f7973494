//! Resumable attribution: every N samples the accumulators, per-sample token relevance and
//! start values are written (atomically) to a checkpoint beside the output; a killed run
//! restarted with `--resume` restores them bit for bit and continues with the next sample, so
//! its result equals an uninterrupted run's exactly. A checkpoint records a fingerprint of
//! the run's protocol and refuses to resume a different run.

use super::{run_one, MemoryMode, Target};
use crate::error::{self, Kind, Remedy};
use crate::fail;
use crate::model::DecoderModel;
use crate::relevance::accum::{Accumulators, LinearAcc};
use crate::relevance::rules::Rule;
use anyhow::Result;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const KEY: &str = "sparc3_checkpoint";

/// Per-sample token relevance and start values restored from a checkpoint.
type Progress = (Vec<Vec<f32>>, Vec<f64>);

#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub path: PathBuf,
    /// Save every this many samples (0: only when interrupted).
    pub every: usize,
    /// sha256 of the run's protocol.
    pub fingerprint: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    fingerprint: String,
    done: usize,
    samples: usize,
    per_weight: bool,
}

impl Checkpoint {
    /// The checkpoint path for an output file.
    pub fn path_for(out: &Path) -> PathBuf {
        let mut s = out.as_os_str().to_owned();
        s.push(".ckpt");
        PathBuf::from(s)
    }

    /// The checkpoint of block group `k` of `n` (its own file and fingerprint).
    pub fn for_group(&self, k: usize, n: usize) -> Checkpoint {
        let mut path = self.path.as_os_str().to_owned();
        path.push(format!(".group{}of{n}", k + 1));
        Checkpoint {
            path: PathBuf::from(path),
            every: self.every,
            fingerprint: crate::util::sha256_hex(
                format!("{} group {k} of {n}", self.fingerprint).as_bytes(),
            ),
        }
    }

    /// Save a finished pass (kept until the whole run's output is written) when checkpoints
    /// are written periodically.
    pub fn save_final(
        &self,
        acc: &Accumulators,
        token_rel: &[Vec<f32>],
        starts: &[f64],
    ) -> Result<()> {
        if self.every == 0 {
            return Ok(());
        }
        self.save(acc, token_rel, starts)
    }

    /// Write the state tensor by tensor, straight from the accumulators (no copy in memory).
    fn save(&self, acc: &Accumulators, token_rel: &[Vec<f32>], starts: &[f64]) -> Result<()> {
        use crate::util::stfile::{Spec, Writer};
        let mut specs = Vec::new();
        for (name, l) in &acc.layers {
            if !l.weight.is_empty() {
                specs.push(Spec::new(
                    format!("w.{name}"),
                    Dtype::F32,
                    vec![l.weight.len()],
                ));
            }
            if let Some(b) = &l.bias {
                specs.push(Spec::new(format!("b.{name}"), Dtype::F32, vec![b.len()]));
            }
            specs.push(Spec::new(
                format!("i.{name}"),
                Dtype::F32,
                vec![l.inputs.len()],
            ));
            specs.push(Spec::new(format!("s.{name}"), Dtype::U64, vec![2]));
        }
        for (i, t) in token_rel.iter().enumerate() {
            specs.push(Spec::new(format!("t.{i:09}"), Dtype::F32, vec![t.len()]));
        }
        specs.push(Spec::new("starts", Dtype::F64, vec![starts.len()]));
        let meta = Meta {
            fingerprint: self.fingerprint.clone(),
            done: starts.len(),
            samples: acc.samples,
            per_weight: acc.per_weight,
        };
        let mut md = HashMap::new();
        md.insert(KEY.to_string(), serde_json::to_string(&meta)?);
        let mut w = Writer::create(&self.path, &specs, Some(md), false)?;
        for (name, l) in &acc.layers {
            if !l.weight.is_empty() {
                w.write_f32(&format!("w.{name}"), &l.weight, None)?;
            }
            if let Some(b) = &l.bias {
                w.write_f32(&format!("b.{name}"), b, None)?;
            }
            w.write_f32(&format!("i.{name}"), &l.inputs, None)?;
            let shape: Vec<u8> = [l.shape[0] as u64, l.shape[1] as u64]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            w.write(&format!("s.{name}"), &shape)?;
        }
        for (i, t) in token_rel.iter().enumerate() {
            w.write_f32(&format!("t.{i:09}"), t, None)?;
        }
        let st: Vec<u8> = starts.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write("starts", &st)?;
        w.finish()
    }

    /// Restore a saved state into `acc`; None when there is no checkpoint file.
    fn load(&self, acc: &mut Accumulators) -> Result<Option<Progress>> {
        if !self.path.exists() {
            return Ok(None);
        }
        let label = self.path.display();
        let r = match crate::util::stfile::Reader::open(&self.path) {
            Ok(r) => r,
            Err(e) => fail!(Input, "checkpoint {label} is damaged: {e:#}"),
        };
        let Some(meta) = r
            .metadata()
            .and_then(|m| m.get(KEY))
            .and_then(|m| serde_json::from_str::<Meta>(m).ok())
        else {
            fail!(Input, "{label} is not a sparc3 checkpoint");
        };
        if meta.fingerprint != self.fingerprint {
            fail!(
                Input,
                "checkpoint {label} belongs to a different run (model, data or settings differ); delete it or start the run afresh"
            );
        }
        acc.layers.clear();
        acc.per_weight = meta.per_weight;
        let mut tokens: Vec<(String, Vec<f32>)> = Vec::new();
        let mut starts = Vec::new();
        let tensors = r.tensors();
        for (name, info) in &tensors {
            if let Some(l) = name.strip_prefix("s.") {
                let dims: Vec<usize> = r
                    .bytes(info)?
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
                    .collect();
                if dims.len() != 2 {
                    fail!(Input, "checkpoint {label} is damaged");
                }
                acc.layers
                    .entry(l.to_string())
                    .or_insert_with(|| LinearAcc {
                        shape: [dims[0], dims[1]],
                        weight: Vec::new(),
                        bias: None,
                        inputs: Vec::new(),
                    });
            } else if name.starts_with("t.") {
                tokens.push((name.clone(), r.f32s(name, info)?));
            } else if name == "starts" {
                starts = r
                    .bytes(info)?
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
            }
        }
        for (name, info) in &tensors {
            let Some((kind, l)) = name.split_once('.') else {
                continue;
            };
            let Some(e) = acc.layers.get_mut(l) else {
                continue;
            };
            match kind {
                "w" => e.weight = r.f32s(name, info)?,
                "b" => e.bias = Some(r.f32s(name, info)?),
                "i" => e.inputs = r.f32s(name, info)?,
                _ => {}
            }
        }
        tokens.sort_by(|a, b| a.0.cmp(&b.0));
        if starts.len() != meta.done || tokens.len() != meta.done {
            fail!(Input, "checkpoint {label} is inconsistent");
        }
        acc.samples = meta.samples;
        Ok(Some((tokens.into_iter().map(|t| t.1).collect(), starts)))
    }

    /// Remove the checkpoint once the output is safely written.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Attribute samples (batch 1 each) into `acc`, with checkpoints: resumes from `ckpt` when
/// `resume` (and it exists), saves every `ckpt.every` samples and when interrupted. Returns
/// token relevances, starts and the number of samples restored from the checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn run_samples_resumable(
    model: &DecoderModel,
    samples: &[Vec<u32>],
    target: impl Fn(usize) -> Target,
    rule: Rule,
    mode: MemoryMode,
    acc: &mut Accumulators,
    ckpt: Option<&Checkpoint>,
    resume: bool,
    mut progress: impl FnMut(usize),
) -> Result<(Vec<Vec<f32>>, Vec<f64>, usize)> {
    let (mut token_rel, mut starts) = match (ckpt, resume) {
        (Some(c), true) => c.load(acc)?.unwrap_or_default(),
        _ => (Vec::new(), Vec::new()),
    };
    let restored = starts.len();
    if restored > samples.len() {
        fail!(Input, "the checkpoint holds more samples than this run has");
    }
    progress(restored);
    for i in restored..samples.len() {
        match run_one(model, &samples[i], &target(i), rule, mode, acc) {
            Ok((t, s)) => {
                token_rel.push(t);
                starts.push(s);
            }
            Err(e) => {
                if let (Some(c), true) = (ckpt, crate::util::interrupt::interrupted()) {
                    if !starts.is_empty() {
                        c.save(acc, &token_rel, &starts)?;
                        let msg = format!(
                            "interrupted after {} of {} samples; checkpoint written to {}",
                            starts.len(),
                            samples.len(),
                            c.path.display()
                        );
                        return Err(error::with_remedy(Kind::Interrupted, msg, Remedy::Resume));
                    }
                }
                return Err(e);
            }
        }
        progress(i + 1);
        if let Some(c) = ckpt {
            if c.every > 0 && (i + 1) % c.every == 0 && i + 1 < samples.len() {
                c.save(acc, &token_rel, &starts)?;
            }
        }
    }
    Ok((token_rel, starts, restored))
}
