//! Two-choice task metric: `logit(target) − logit(foil)` at each prompt's last position, and
//! accuracy (target above foil).

use crate::model::DecoderModel;
use crate::tasks::task::TaskPrompt;
use anyhow::Result;
use candle_core::Tensor;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TaskMetrics {
    pub accuracy: f64,
    pub logit_diff: f64,
    pub prompts: usize,
}

impl TaskMetrics {
    pub fn from_diffs(d: &[f64]) -> Self {
        let n = d.len().max(1) as f64;
        Self {
            accuracy: d.iter().filter(|&&x| x > 0.0).count() as f64 / n,
            logit_diff: d.iter().sum::<f64>() / n,
            prompts: d.len(),
        }
    }
}

/// Logit difference of every prompt, in prompt order. Prompts run in batches of similar
/// length, right-padded: attention is causal, so padding after a prompt's last token cannot
/// change what the model computes at that token.
pub fn logit_diffs(model: &DecoderModel, prompts: &[TaskPrompt]) -> Result<Vec<f64>> {
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i].ids.len());
    let mut out = vec![0.0; prompts.len()];
    for chunk in order.chunks(64) {
        crate::util::interrupt::check()?;
        let t = chunk
            .iter()
            .map(|&i| prompts[i].ids.len())
            .max()
            .unwrap_or(1);
        let mut ids = Vec::with_capacity(chunk.len() * t);
        let mut rows = Vec::with_capacity(chunk.len());
        for (b, &i) in chunk.iter().enumerate() {
            let p = &prompts[i].ids;
            ids.extend_from_slice(p);
            ids.extend(std::iter::repeat_n(p[p.len() - 1], t - p.len()));
            rows.push((b * t + p.len() - 1) as u32);
        }
        let ids = Tensor::from_vec(ids, (chunk.len(), t), &model.device)?;
        let h = model.hidden(&ids)?;
        let hidden = h.dim(2)?;
        let rows = Tensor::from_vec(rows, chunk.len(), &model.device)?;
        // Only each prompt's last position goes through the head.
        let last = h
            .reshape(((), hidden))?
            .index_select(&rows, 0)?
            .unsqueeze(1)?;
        let logits = model.head(&last)?.squeeze(1)?.to_vec2::<f32>()?;
        for (row, &i) in logits.iter().zip(chunk) {
            let p = &prompts[i];
            out[i] = row[p.target_id as usize] as f64 - row[p.foil_id as usize] as f64;
        }
    }
    Ok(out)
}

pub fn evaluate(model: &DecoderModel, prompts: &[TaskPrompt]) -> Result<TaskMetrics> {
    Ok(TaskMetrics::from_diffs(&logit_diffs(model, prompts)?))
}
