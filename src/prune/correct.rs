//! Targeted correction (METHOD.md §3): score components on an undesired set (relevance of its
//! continuations) and on general text (relevance of next tokens), contrast the two on a common
//! scale, and remove the components that matter to the undesired behaviour but not to general
//! text.

use super::ranking::{rank, AttrRun, Method, Ranking};
use super::structured::Granularity;
use crate::lrp::Target;
use crate::model::DecoderModel;
use anyhow::Result;

/// Score the selected components on both sets (one attribution each, `runs`: undesired,
/// general): `(general, undesired)`, to be contrasted by `Ranking::contrast` with any
/// criterion. `undesired`: `prompt ++ continuation` with what to explain in it (the
/// continuation span, or only its flagged tokens); `general`: text windows.
#[allow(clippy::too_many_arguments)]
pub fn rank_sets(
    model: &DecoderModel,
    method: Method,
    granularity: Granularity,
    undesired: &[(Vec<u32>, Target)],
    general: &[Vec<u32>],
    selected: &dyn Fn(&str) -> bool,
    runs: [&AttrRun; 2],
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<(Ranking, Ranking)> {
    let scope = super::mask::Scope::Global;
    let u_ids: Vec<Vec<u32>> = undesired.iter().map(|u| u.0.clone()).collect();
    let u = rank(
        model,
        &u_ids,
        &|i| undesired[i].1.clone(),
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
        &|_| Target::NextToken,
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
