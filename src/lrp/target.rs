//! What a relevance pass explains: the target at the head, and the token sets of the
//! set-mass target.

use crate::fail;
use anyhow::Result;

/// What the start relevance explains.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Target {
    /// Every position t < T−1 explains the logit of the true next token.
    NextToken,
    /// Every position t < T−1 explains the log-probability of the true next token (the
    /// log-softmax's own gradient, `e_y − p`, seeds the pass): relevance for the model's loss
    /// rather than for one raw logit, so competing tokens count too.
    NextTokenLogprob,
    /// The final position explains the logit of `token` (default: the argmax).
    Last { token: Option<u32> },
    /// `logit(target) − logit(foil)` at the final position.
    LogitDiff { target: u32, foil: u32 },
    /// The logits of the continuation tokens after a prompt of `prompt_len` tokens (with
    /// `logprob`: their log-probabilities, as `NextTokenLogprob` is to `NextToken`).
    Span { prompt_len: usize, logprob: bool },
    /// The logits (or log-probabilities) of the tokens at these positions (each predicted from
    /// the one before), e.g. only the flagged words of a continuation.
    Tokens {
        positions: Vec<usize>,
        logprob: bool,
    },
    /// At every continuation position (after a prompt of `prompt_len` tokens), the probability
    /// that the next token belongs to `set` (e.g. a lexicon's words): the expected number of
    /// such tokens along the continuation. Signed relevance is, to first order, how much that
    /// expectation falls when a component is removed.
    SetMass {
        prompt_len: usize,
        #[serde(skip)]
        set: std::sync::Arc<TokenSet>,
    },
}

/// A set of next tokens that may depend on the current one (the later pieces of words that
/// the tokenizer splits).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenSet {
    /// In the set at every position.
    pub always: Vec<u32>,
    /// In the set when the current token is the key.
    pub after: std::collections::HashMap<u32, Vec<u32>>,
}

impl TokenSet {
    /// The set's members for the position whose input token is `current`.
    pub fn at(&self, current: u32) -> impl Iterator<Item = u32> + '_ {
        self.always
            .iter()
            .chain(self.after.get(&current).into_iter().flatten())
            .copied()
    }

    pub fn len(&self) -> usize {
        self.always.len() + self.after.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::NextToken => "next-token",
            Target::NextTokenLogprob => "next-token-logprob",
            Target::Last { .. } => "last",
            Target::LogitDiff { .. } => "logit-diff",
            Target::Span { logprob: false, .. } => "span",
            Target::Span { logprob: true, .. } => "span-logprob",
            Target::Tokens { logprob: false, .. } => "tokens",
            Target::Tokens { logprob: true, .. } => "tokens-logprob",
            Target::SetMass { .. } => "set-mass",
        }
    }

    /// Whether each explained token's log-probability (not its logit) is explained.
    pub fn is_logprob(&self) -> bool {
        matches!(
            self,
            Target::NextTokenLogprob
                | Target::Span { logprob: true, .. }
                | Target::Tokens { logprob: true, .. }
        )
    }
}

impl Target {
    /// Refuse a target that does not fit a sequence of `t` tokens.
    pub fn check(&self, t: usize) -> Result<()> {
        if matches!(self, Target::NextToken | Target::NextTokenLogprob) && t < 2 {
            fail!(
                Input,
                "next-token relevance needs sequences of at least 2 tokens, got {t}"
            );
        }
        if let Target::Span { prompt_len, .. } | Target::SetMass { prompt_len, .. } = self {
            if *prompt_len == 0 || *prompt_len >= t {
                fail!(Input, "a continuation span needs a non-empty prompt and continuation ({prompt_len} of {t} tokens)");
            }
        }
        if let Target::Tokens { positions, .. } = self {
            if positions.is_empty() || positions.iter().any(|&p| p == 0 || p >= t) {
                fail!(
                    Input,
                    "token positions to explain must be in 1..{t} and not empty, got {positions:?}"
                );
            }
        }
        Ok(())
    }
}
