//! Targets of the relevance pass: token positions, set mass and log-probabilities.

use super::{run_one, MemoryMode, Target, TokenSet};
use crate::model::DecoderModel;
use crate::relevance::{accum, rules};
use candle_core::{Tensor, D};

/// `Tokens` over every continuation position is the `Span` target exactly; a subset of the
/// positions explains less (and differently).
#[test]
fn token_positions_generalise_the_continuation_span() {
    let loaded =
        crate::source::load(&crate::source::ModelRequest::cpu("builtin:demo-llama")).unwrap();
    let m = &loaded.model;
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 500).collect();
    let run = |t: Target| {
        let mut acc = accum::Accumulators::new(accum::Aggregation::Signed);
        let (tok, start) = run_one(
            m,
            &ids,
            &t,
            rules::Rule::Lrp { epsilon: None },
            MemoryMode::Store,
            &mut acc,
        )
        .unwrap();
        (acc, tok, start)
    };
    let (a, ta, sa) = run(Target::Span {
        prompt_len: 10,
        logprob: false,
    });
    let (b, tb, sb) = run(Target::Tokens {
        positions: (10..24).collect(),
        logprob: false,
    });
    assert_eq!(sa, sb);
    assert_eq!(ta, tb);
    for (k, l) in &a.layers {
        assert_eq!(l.weight, b.layers[k].weight, "{k}");
    }
    let (c, _, sc) = run(Target::Tokens {
        positions: vec![12, 20],
        logprob: false,
    });
    assert_ne!(sc, sa);
    let k = a.layers.keys().next().unwrap();
    assert_ne!(c.layers[k].weight, a.layers[k].weight);
    // Out-of-range positions are refused.
    let mut acc = accum::Accumulators::new(accum::Aggregation::Abs);
    for bad in [vec![], vec![0], vec![24]] {
        let r = run_one(
            m,
            &ids,
            &Target::Tokens {
                positions: bad,
                logprob: false,
            },
            rules::Rule::Grad,
            MemoryMode::Store,
            &mut acc,
        );
        assert!(r.is_err());
    }
}

/// The probability mass of a token set: with one member at one position it is that token's
/// probability, and its relevance is the log-probability's scaled by it; members add up;
/// a member keyed on the current token counts only after that token.
#[test]
fn set_mass_is_the_probability_and_adds_over_members() {
    let loaded =
        crate::source::load(&crate::source::ModelRequest::cpu("builtin:demo-llama")).unwrap();
    let m = &loaded.model;
    let ids: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 500).collect();
    let run = |t: Target, rule| {
        let mut acc = accum::Accumulators::new(accum::Aggregation::Signed);
        let (_, start) = run_one(m, &ids, &t, rule, MemoryMode::Store, &mut acc).unwrap();
        (acc, start)
    };
    let mass = |always: Vec<u32>, after: Vec<(u32, Vec<u32>)>| Target::SetMass {
        prompt_len: 19,
        set: std::sync::Arc::new(TokenSet {
            always,
            after: after.into_iter().collect(),
        }),
    };
    let x = Tensor::from_slice(&ids, (1, ids.len()), &m.device).unwrap();
    let probs = candle_nn::ops::softmax_last_dim(&m.forward(&x).unwrap().squeeze(0).unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let (y, other) = (ids[19], 7u32);
    let py = probs[18][y as usize] as f64;
    for rule in [rules::Rule::Grad, rules::Rule::Lrp { epsilon: None }] {
        let (a, sa) = run(mass(vec![y], vec![]), rule);
        assert!((sa - py).abs() < 1e-5 * py, "{sa} vs {py}");
        let (l, _) = run(
            Target::Tokens {
                positions: vec![19],
                logprob: true,
            },
            rule,
        );
        let (b, sb) = run(mass(vec![other], vec![]), rule);
        let (ab, sab) = run(mass(vec![y, other], vec![]), rule);
        assert!((sab - sa - sb).abs() < 1e-6);
        // Keyed on the current token (ids[18]): the same as always in the set; keyed on
        // another token: not in the set.
        let (k, sk) = run(mass(vec![], vec![(ids[18], vec![y])]), rule);
        assert_eq!(sk, sa);
        let (_, s0) = run(mass(vec![], vec![(ids[18] + 1, vec![y])]), rule);
        assert_eq!(s0, 0.0);
        for (name, la) in &a.layers {
            let (ra, rl) = (&la.weight, &l.layers[name].weight);
            let scale = rl.iter().fold(0f32, |x, v| x.max(v.abs())) * py as f32;
            for i in 0..ra.len() {
                assert!(
                    (ra[i] - py as f32 * rl[i]).abs() <= 1e-4 * scale,
                    "{name}[{i}]"
                );
                let sum = ra[i] + b.layers[name].weight[i];
                assert!(
                    (ab.layers[name].weight[i] - sum).abs() <= 1e-4 * scale,
                    "{name}[{i}]"
                );
            }
            assert_eq!(ra, &k.layers[name].weight, "{name}");
        }
    }
}

/// The demo model's log-softmax over the vocabulary at each position of `ids`: `[T][vocab]`.
fn log_probs(m: &DecoderModel, ids: &[u32]) -> Vec<Vec<f32>> {
    let x = Tensor::from_slice(ids, (1, ids.len()), &m.device).unwrap();
    let logits = m.forward(&x).unwrap().squeeze(0).unwrap();
    candle_nn::ops::log_softmax(&logits, D::Minus1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

/// `Σ_t log p(ids[t+1])` for `t` from `from` on.
fn loglik_from(lp: &[Vec<f32>], ids: &[u32], from: usize) -> f64 {
    (from..ids.len() - 1)
        .map(|t| lp[t][ids[t + 1] as usize] as f64)
        .sum()
}

/// One signed plain-gradient run: the accumulated relevance and the start value.
fn grad_run(m: &DecoderModel, ids: &[u32], target: &Target) -> (accum::Accumulators, f64) {
    let mut acc = accum::Accumulators::new(accum::Aggregation::Signed);
    let (_, start) = run_one(
        m,
        ids,
        target,
        rules::Rule::Grad,
        MemoryMode::Store,
        &mut acc,
    )
    .unwrap();
    (acc, start)
}

/// The largest relevance `r` of layer `name` matches a central finite difference of the
/// log-likelihood in that weight, times the weight.
fn check_against_finite_difference(m: &DecoderModel, ids: &[u32], name: &str, r: &[f32]) {
    // The weight with the largest relevance in this layer.
    let k = (0..r.len())
        .max_by(|&a, &b| r[a].abs().total_cmp(&r[b].abs()))
        .unwrap();
    let lin = m.linears().into_iter().find(|l| l.name == name).unwrap();
    let w = lin.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let h = 1e-2 * w[k].abs().max(1e-3);
    let at = |d: f32| {
        let mut m2 = m.clone();
        let l = m2
            .linears_mut()
            .into_iter()
            .find(|l| l.name == name)
            .unwrap();
        let mut v = w.clone();
        v[k] += d;
        l.weight = Tensor::from_vec(v, l.weight.dims(), &l.weight.device().clone()).unwrap();
        loglik_from(&log_probs(&m2, ids), ids, 0)
    };
    let fd = (at(h) - at(-h)) / (2.0 * h as f64) * w[k] as f64;
    let rel = r[k] as f64;
    assert!(
        (fd - rel).abs() < 0.02 * rel.abs(),
        "{name}[{k}]: W·∇W {rel} vs finite difference {fd}"
    );
}

/// `next-token-logprob` with the plain-gradient rule is `W ⊙ ∇W` of `Σ_t log p(x_{t+1})`:
/// its start value is the sequence's log-likelihood and its weight relevance matches a
/// central finite difference of that log-likelihood.
#[test]
fn logprob_target_is_the_log_likelihood_and_its_gradient() {
    let loaded =
        crate::source::load(&crate::source::ModelRequest::cpu("builtin:demo-llama")).unwrap();
    let m = &loaded.model;
    // Longer than one chunk of rows of the log-softmax.
    let ids: Vec<u32> = (0..160).map(|i| (i * 37 + 5) % 500).collect();
    let (acc, start) = grad_run(m, &ids, &Target::NextTokenLogprob);
    let lp = log_probs(m, &ids);
    let ll = loglik_from(&lp, &ids, 0);
    assert!(
        (start - ll).abs() < 1e-4 * ll.abs(),
        "start {start} vs {ll}"
    );
    // A span of log-probabilities is the same seed restricted to the continuation: from
    // the first position it is the whole sequence's; from a later one, its start value is
    // the continuation's log-likelihood.
    let span = |prompt_len| Target::Span {
        prompt_len,
        logprob: true,
    };
    let (acc_span, s1) = grad_run(m, &ids, &span(1));
    assert_eq!(s1, start);
    for (k, l) in &acc.layers {
        assert_eq!(l.weight, acc_span.layers[k].weight, "{k}");
    }
    let cont = loglik_from(&lp, &ids, 139);
    let (_, s140) = grad_run(m, &ids, &span(140));
    assert!((s140 - cont).abs() < 1e-4 * cont.abs(), "{s140} vs {cont}");
    // The logit target differs: the softmax's competition is part of the gradient.
    let (acc_logit, _) = grad_run(m, &ids, &Target::NextToken);
    let names: Vec<String> = m.linears().iter().map(|l| l.name.clone()).collect();
    for name in [names.first().unwrap(), names.last().unwrap()] {
        let r = &acc.layers[name].weight;
        assert_ne!(r, &acc_logit.layers[name].weight);
        check_against_finite_difference(m, &ids, name, r);
    }
}
