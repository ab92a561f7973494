//! Targeted correction (METHOD.md §3): score components on an undesired set (relevance of its
//! continuations) and on general text (relevance of next tokens), contrast the two on a common
//! scale, and remove the components that matter to the undesired behaviour but not to general
//! text.

use crate::lrp::Target;
use crate::model::DecoderModel;
use crate::prune::method::Method;
use crate::prune::ranking::{rank, AttrRun, Ranking};
use crate::prune::structured::Granularity;
use crate::relevance::accum::Aggregation;
use anyhow::Result;

/// What the two sets' relevance explains, and how it is summed.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The paper's: |relevance| of the logits of the undesired continuations and of general
    /// text's next tokens.
    Logit,
    /// Log-probabilities. Undesired side signed: to first order, what removing a component takes
    /// away from the behaviour's log-likelihood (negative where removal would raise it). General
    /// side per-token squared (`Σ_t R_t²`, an empirical Fisher): to second order, what removal
    /// adds to the loss on general text, whose first-order term vanishes at a trained optimum.
    Logprob,
}

impl Objective {
    /// The target for an undesired record: its continuation span, or only `positions`.
    pub fn undesired_target(self, prompt_len: usize, positions: Option<Vec<usize>>) -> Target {
        let logprob = self == Objective::Logprob;
        match positions {
            None => Target::Span {
                prompt_len,
                logprob,
            },
            Some(positions) => Target::Tokens { positions, logprob },
        }
    }

    /// `(undesired, general)` aggregations.
    fn aggregations(self) -> (Aggregation, Aggregation) {
        match self {
            Objective::Logit => (Aggregation::Abs, Aggregation::Abs),
            Objective::Logprob => (Aggregation::Signed, Aggregation::TokenSq),
        }
    }

    fn general_target(self) -> Target {
        match self {
            Objective::Logit => Target::NextToken,
            Objective::Logprob => Target::NextTokenLogprob,
        }
    }
}

/// Score the selected components on both sets (one attribution each, `runs`: undesired,
/// general; what each explains: `objective`): `(general, undesired)`, to be contrasted by
/// `Ranking::contrast` with any criterion. `undesired`: `prompt ++ continuation` with what to explain in it (the
/// continuation span, or only its flagged tokens); `general`: text windows.
#[allow(clippy::too_many_arguments)]
pub fn rank_sets(
    model: &DecoderModel,
    method: Method,
    objective: Objective,
    granularity: Granularity,
    undesired: &[(Vec<u32>, Target)],
    general: &[Vec<u32>],
    selected: &dyn Fn(&str) -> bool,
    runs: [&AttrRun; 2],
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<(Ranking, Ranking)> {
    let scope = crate::prune::mask::Scope::Global;
    let (u_agg, g_agg) = objective.aggregations();
    let general_target = objective.general_target();
    let u_ids: Vec<Vec<u32>> = undesired.iter().map(|u| u.0.clone()).collect();
    let u = rank(
        model,
        &u_ids,
        &|i| undesired[i].1.clone(),
        u_agg,
        method,
        granularity,
        scope,
        selected,
        runs[0],
        |i, n| progress("undesired", i, n),
    )?;
    let g = rank(
        model,
        general,
        &|_| general_target.clone(),
        g_agg,
        method,
        granularity,
        scope,
        selected,
        runs[1],
        |i, n| progress("general", i, n),
    )?;
    Ok((g, u))
}

/// `prompt ++ continuation` with the prompt length for every record; records without a
/// continuation get the model's own greedy continuation of `new_tokens` tokens (the behaviour
/// to explain and to measure).
pub fn complete(
    model: &DecoderModel,
    recs: Vec<crate::tasks::undesired::Encoded>,
    new_tokens: usize,
) -> Result<Vec<(Vec<u32>, usize)>> {
    let missing: Vec<Vec<u32>> = recs
        .iter()
        .filter(|r| r.continuation.is_none())
        .map(|r| r.prompt.clone())
        .collect();
    let greedy = if missing.is_empty() {
        Vec::new()
    } else {
        crate::eval::generate::generate(
            model,
            &missing,
            &crate::eval::generate::GenConfig {
                new_tokens,
                samples: 1,
                temperature: 0.0,
                seed: 0,
            },
            |_| {},
        )?
    };
    let mut g = greedy.into_iter();
    let max = model.dims.max_positions;
    Ok(recs
        .into_iter()
        .map(|r| {
            let plen = r.prompt.len();
            let mut s = r.prompt;
            match r.continuation {
                Some(c) => s.extend(c),
                None => s.extend(g.next().expect("one per missing").swap_remove(0)),
            }
            s.truncate(max);
            (s, plen)
        })
        .collect())
}
