//! The flag vocabulary: value types shared by every command, parsed once, named once.
//! Domain enums derive `clap::ValueEnum` themselves; [`one_of`] narrows one to the values a
//! command accepts, so `--help` lists exactly those.

use crate::fail;
use anyhow::Result;
use candle_core::{DType, Device};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::ValueEnum;

/// A parser accepting only `allowed` values of a domain enum.
pub fn one_of<E: ValueEnum + Clone + Send + Sync + 'static>(
    allowed: &'static [E],
) -> impl TypedValueParser<Value = E> {
    PossibleValuesParser::new(allowed.iter().filter_map(|v| v.to_possible_value()))
        .map(|s| E::from_str(&s, true).expect("listed values parse"))
}

/// What relevance explains (the data-carrying `lrp::Target` is built from it and the token
/// flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// Every position explains the logit of the true next token.
    NextToken,
    /// Every position explains the log-probability of the true next token (the model's loss).
    NextTokenLogprob,
    /// The final position explains the argmax logit (or --token).
    Last,
    /// logit(--token) − logit(--foil) at the final position.
    LogitDiff,
    /// The logits of each record's continuation tokens after its prompt (JSONL records with
    /// "prompt" and "continuation").
    Span,
}

impl TargetKind {
    pub const COMPRESS: &'static [TargetKind] = &[
        TargetKind::NextToken,
        TargetKind::NextTokenLogprob,
        TargetKind::Last,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuleKind {
    /// AttnLRP.
    Lrp,
    /// Plain gradient × weight.
    Grad,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MemoryChoice {
    /// Store when the activations fit comfortably, recompute otherwise.
    Auto,
    /// Keep every block's internals from the forward pass (fastest).
    Store,
    /// Keep only block inputs; recompute a block's internals in the backward pass.
    Recompute,
}

/// `--dtype`: `auto` (None: each tensor keeps its checkpoint dtype) or a dtype.
pub fn parse_storage_dtype(s: &str) -> Result<Option<DType>> {
    match s {
        "auto" => Ok(None),
        "f32" | "float32" | "f16" | "float16" | "bf16" | "bfloat16" => {
            parse_dtype(s, "--dtype").map(Some)
        }
        other => fail!(Usage, "--dtype {other}: expected auto, f32, f16 or bf16"),
    }
}

pub fn parse_dtype(s: &str, flag: &str) -> Result<DType> {
    Ok(match s {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => fail!(Usage, "{flag} {other}: expected f32, f16 or bf16"),
    })
}

pub fn parse_device(s: &str) -> Result<Device> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => fail!(Usage, "--device {s}: expected cpu, cuda or cuda:N"),
        },
        None => fail!(Usage, "--device {s}: expected cpu, cuda or cuda:N"),
    };
    if !candle_core::utils::cuda_is_available() {
        fail!(
            Resource,
            "--device {s}: this sparc3 was built without CUDA support (rebuild with `--features cuda`)"
        );
    }
    match Device::new_cuda(ordinal) {
        Ok(d) => Ok(d),
        Err(e) => fail!(Resource, "--device {s}: {e}"),
    }
}

/// `--layers REGEX`, checked.
pub fn parse_layers(r: &Option<String>) -> Result<crate::jobs::LayerFilter> {
    match r {
        Some(r) => match regex::Regex::new(r) {
            Ok(r) => Ok(crate::jobs::LayerFilter(Some(r))),
            Err(e) => fail!(Usage, "--layers {r}: invalid regex: {e}"),
        },
        None => Ok(crate::jobs::LayerFilter(None)),
    }
}

/// `--shard i/n`: this job's part `i` (0-based) of `n`.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let parsed = s.split_once('/').and_then(|(i, n)| {
        Some((
            i.trim().parse::<usize>().ok()?,
            n.trim().parse::<usize>().ok()?,
        ))
    });
    match parsed {
        Some((i, n)) if n >= 1 && i < n => Ok((i, n)),
        _ => fail!(Usage, "--shard {s}: expected i/n with 0 ≤ i < n (e.g. 0/4)"),
    }
}

/// The flag that sets a value named in a domain error.
pub fn flag_of(s: crate::error::Setting) -> &'static str {
    use crate::error::Setting::*;
    match s {
        Ratio => "--ratio",
        Ratios => "--ratios",
        Layers => "--layers",
        Pattern => "--pattern",
        Scope => "--scope",
        Method => "--method",
        SeqLen => "--seq-len",
        EvalSeqLen => "--eval-seq-len",
        EvalText => "--eval",
        Count => "--count",
        Token => "--token",
        Foil => "--foil",
        Data => "--data",
        EvalWindows => "--eval-windows",
        Samples => "--samples",
        Holdout => "--holdout",
        Out => "--out",
    }
}

/// A remedy named in a domain error, said with the flags that apply it.
pub fn remedy_flags(r: crate::error::Remedy) -> &'static str {
    use crate::error::Remedy::*;
    match r {
        Replace => " (use --force to replace it)",
        Resume => " (rerun with --resume)",
        LessMemory { store: true } => "; lower it with --memory recompute, a smaller --seq-len or --dtype bf16 (or --force to try anyway)",
        LessMemory { store: false } => "; lower it with a smaller --seq-len or --dtype bf16 (or --force to try anyway)",
        MorePasses => "; use more --passes, or --passes auto (or --force to try anyway)",
    }
}
