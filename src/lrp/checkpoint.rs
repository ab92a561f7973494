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
use safetensors::tensor::TensorView;
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

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_of(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Checkpoint {
    /// The checkpoint path for an output file.
    pub fn path_for(out: &Path) -> PathBuf {
        let mut s = out.as_os_str().to_owned();
        s.push(".ckpt");
        PathBuf::from(s)
    }

    fn save(&self, acc: &Accumulators, token_rel: &[Vec<f32>], starts: &[f64]) -> Result<()> {
        let mut raw: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = Vec::new();
        for (name, l) in &acc.layers {
            if !l.weight.is_empty() {
                raw.push((
                    format!("w.{name}"),
                    vec![l.weight.len()],
                    f32_bytes(&l.weight),
                    Dtype::F32,
                ));
            }
            if let Some(b) = &l.bias {
                raw.push((format!("b.{name}"), vec![b.len()], f32_bytes(b), Dtype::F32));
            }
            raw.push((
                format!("i.{name}"),
                vec![l.inputs.len()],
                f32_bytes(&l.inputs),
                Dtype::F32,
            ));
            raw.push((
                format!("s.{name}"),
                vec![2],
                [l.shape[0] as u64, l.shape[1] as u64]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
                Dtype::U64,
            ));
        }
        for (i, t) in token_rel.iter().enumerate() {
            raw.push((format!("t.{i:09}"), vec![t.len()], f32_bytes(t), Dtype::F32));
        }
        raw.push((
            "starts".into(),
            vec![starts.len()],
            starts.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F64,
        ));
        let views = raw
            .iter()
            .map(|(n, s, b, d)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
            .collect::<Result<Vec<_>>>()?;
        let meta = Meta {
            fingerprint: self.fingerprint.clone(),
            done: starts.len(),
            samples: acc.samples,
            per_weight: acc.per_weight,
        };
        let mut md = HashMap::new();
        md.insert(KEY.to_string(), serde_json::to_string(&meta)?);
        let bytes = safetensors::serialize(views, Some(md))?;
        crate::util::fs::atomic_write_on_exit(&self.path, &bytes)
    }

    /// Restore a saved state into `acc`; None when there is no checkpoint file.
    fn load(&self, acc: &mut Accumulators) -> Result<Option<Progress>> {
        if !self.path.exists() {
            return Ok(None);
        }
        let label = self.path.display();
        let bytes = std::fs::read(&self.path)
            .map_err(|e| crate::error::err(crate::error::Kind::Input, format!("{label}: {e}")))?;
        let (_, header) = match safetensors::SafeTensors::read_metadata(&bytes) {
            Ok(h) => h,
            Err(e) => fail!(Input, "checkpoint {label} is damaged: {e}"),
        };
        let Some(meta) = header
            .metadata()
            .as_ref()
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
        let st = match safetensors::SafeTensors::deserialize(&bytes) {
            Ok(s) => s,
            Err(e) => fail!(Input, "checkpoint {label} is damaged: {e}"),
        };
        acc.layers.clear();
        acc.per_weight = meta.per_weight;
        let mut tokens: Vec<(String, Vec<f32>)> = Vec::new();
        let mut starts = Vec::new();
        for (name, v) in st.tensors() {
            let d = v.data();
            if let Some(l) = name.strip_prefix("s.") {
                let dims: Vec<usize> = d
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
                    .collect();
                acc.layers
                    .entry(l.to_string())
                    .or_insert_with(|| LinearAcc {
                        shape: [dims[0], dims[1]],
                        weight: Vec::new(),
                        bias: None,
                        inputs: Vec::new(),
                    });
            } else if name.starts_with("t.") {
                tokens.push((name.clone(), f32_of(d)));
            } else if name == "starts" {
                starts = d
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
            }
        }
        for (name, v) in st.tensors() {
            let (kind, l) = match name.split_once('.') {
                Some(x) => x,
                None => continue,
            };
            let Some(e) = acc.layers.get_mut(l) else {
                continue;
            };
            match kind {
                "w" => e.weight = f32_of(v.data()),
                "b" => e.bias = Some(f32_of(v.data())),
                "i" => e.inputs = f32_of(v.data()),
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
