//! A relevance file written group by group: its layout is fixed from the model before any
//! attribution, each finished group of blocks is written (means, in place of its sums) and its
//! accumulators freed, and the file is renamed into place only when every group is in. The
//! bytes equal those [`RelevanceFile::write`] writes for a single pass.

use super::file::{block_means, token_tensors, unit_names, RelMeta, RelevanceFile, TokenTable};
use crate::model::DecoderModel;
use crate::relevance::accum::Accumulators;
use crate::util::stfile::{Spec, Writer};
use anyhow::Result;
use safetensors::Dtype;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A relevance file under construction beside its destination.
pub struct Staged {
    w: Writer,
    path: PathBuf,
}

/// The tensors a relevance file of this model holds: per-weight relevance (when `per_weight`),
/// neurons and heads of every block, and the token tables for `tokens` = (samples, length).
fn specs(model: &DecoderModel, per_weight: bool, tokens: Option<(usize, usize)>) -> Vec<Spec> {
    let f = |n: String, s: Vec<usize>| Spec::new(n, Dtype::F32, s);
    let mut v = Vec::new();
    for block in &model.blocks {
        let (neurons, down, heads) = unit_names(block);
        v.push(f(neurons, vec![down.in_features()]));
        let o = &block.attn.o;
        v.push(f(heads, vec![o.in_features() / block.attn.head_dim]));
        for lin in block.linears() {
            if per_weight {
                let shape = vec![lin.out_features(), lin.in_features()];
                v.push(f(format!("{}.weight", lin.name), shape));
                if lin.bias.is_some() {
                    v.push(f(format!("{}.bias", lin.name), vec![lin.out_features()]));
                }
            }
        }
    }
    if let Some((n, t)) = tokens.filter(|&(n, t)| n > 0 && t > 0) {
        v.push(f("tokens.ids".into(), vec![n, t]));
        v.push(f("tokens.relevance".into(), vec![n, t]));
        v.push(f("tokens.index".into(), vec![n]));
    }
    v
}

impl Staged {
    /// Lay out the file for `model` (per-weight relevance, `tokens` = the samples' ids when
    /// they share one length).
    pub fn create(
        path: &Path,
        meta: &RelMeta,
        model: &DecoderModel,
        per_weight: bool,
        tokens: Option<(usize, usize)>,
    ) -> Result<Self> {
        let mut md = HashMap::new();
        md.insert("sparc3".to_string(), serde_json::to_string(meta)?);
        let w = Writer::create(path, &specs(model, per_weight, tokens), Some(md), true)?;
        Ok(Self {
            w,
            path: path.to_path_buf(),
        })
    }

    /// Lay out a file of these f32 tensors (name, shape).
    pub fn with_tensors(
        path: &Path,
        meta: &RelMeta,
        tensors: &[(String, Vec<usize>)],
    ) -> Result<Self> {
        let mut md = HashMap::new();
        md.insert("sparc3".to_string(), serde_json::to_string(meta)?);
        let specs: Vec<Spec> = tensors
            .iter()
            .map(|(n, s)| Spec::new(n.clone(), Dtype::F32, s.clone()))
            .collect();
        Ok(Self {
            w: Writer::create(path, &specs, Some(md), true)?,
            path: path.to_path_buf(),
        })
    }

    /// Write one tensor.
    pub fn write(&mut self, name: &str, v: &[f32]) -> Result<()> {
        self.w.write_f32(name, v, None)
    }

    /// Write a finished group's means; its accumulators are consumed.
    pub fn add_blocks(
        &mut self,
        model: &DecoderModel,
        acc: Accumulators,
        blocks: Range<usize>,
    ) -> Result<()> {
        for (name, _, v) in block_means(model, acc, blocks)? {
            self.w.write_f32(&name, &v, None)?;
        }
        Ok(())
    }

    pub fn add_tokens(&mut self, table: TokenTable) -> Result<()> {
        for (name, _, v) in token_tensors(table) {
            self.w.write_f32(&name, &v, None)?;
        }
        Ok(())
    }

    /// Rename into place (at the path it was created for).
    pub fn finish(self) -> Result<()> {
        self.w.finish()
    }
}

/// A job's relevance result: in memory, or already staged beside its destination.
pub enum Output {
    Memory(RelevanceFile),
    Staged(Staged),
}

impl Output {
    /// Write (or publish) the file at `path`.
    pub fn write(self, path: &Path) -> Result<()> {
        match self {
            Output::Memory(f) => f.write(path),
            Output::Staged(s) if s.path == path => s.finish(),
            Output::Staged(s) => {
                anyhow::bail!(
                    "relevance staged for {} written to {}",
                    s.path.display(),
                    path.display()
                )
            }
        }
    }
}
