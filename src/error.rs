//! Error kinds and the documented exit codes.
//!
//! Every error is an `anyhow::Error` with context naming the file, tensor or flag. An error that
//! carries a [`Kind`] marker (attached with [`tag`]) exits with that kind's code; anything else is
//! an internal failure (code 1). Clap's usage errors exit with 2.

use std::fmt;

/// What went wrong, from the user's point of view; each kind has its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A flag value that is out of range or inconsistent with other flags.
    Usage,
    /// A model, tokenizer, data file or scores file that cannot be used.
    Input,
    /// The output cannot be written (exists without `--force`, read-only location, ...).
    Output,
    /// The run would need more memory or a device that is not available.
    Resource,
    /// The run was interrupted by a signal.
    Interrupted,
}

impl Kind {
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Usage => 2,
            Kind::Input => 3,
            Kind::Output => 4,
            Kind::Resource => 5,
            Kind::Interrupted => 130,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Kind::Usage => "invalid arguments",
            Kind::Input => "bad input",
            Kind::Output => "cannot write output",
            Kind::Resource => "insufficient resources",
            Kind::Interrupted => "interrupted",
        };
        f.write_str(s)
    }
}

/// A value the user chose, named by what it is. Below the CLI, errors about a value say
/// "sequence length 600 is larger ..."; the CLI names its own flag instead (`--seq-len 600 is
/// larger ...`), so flag spellings live in the CLI only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Ratio,
    Ratios,
    Layers,
    Pattern,
    Scope,
    Method,
    SeqLen,
    EvalSeqLen,
    EvalText,
    Count,
    Token,
    Foil,
    Data,
    EvalWindows,
    Samples,
    Holdout,
    Out,
}

impl Setting {
    /// The value's name in plain words.
    pub fn what(self) -> &'static str {
        match self {
            Setting::Ratio => "sparsity ratio",
            Setting::Ratios => "sparsity ratios",
            Setting::Layers => "layer filter",
            Setting::Pattern => "pattern",
            Setting::Scope => "scope",
            Setting::Method => "method",
            Setting::SeqLen => "sequence length",
            Setting::EvalSeqLen => "evaluation sequence length",
            Setting::EvalText => "perplexity text",
            Setting::Count => "component count",
            Setting::Token => "token id",
            Setting::Foil => "foil token id",
            Setting::Data => "data file",
            Setting::EvalWindows => "evaluation window count",
            Setting::Samples => "sample count",
            Setting::Holdout => "held-out fraction",
            Setting::Out => "output",
        }
    }
}

/// What the user can do about an error. Below the CLI it is said in plain words; the CLI says
/// it with its flags (`(use --force to replace it)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// The output exists: replacing it must be asked for.
    Replace,
    /// An interrupted run left a checkpoint that a rerun can resume from.
    Resume,
    /// The run needs more memory than is available; `store`: all activations are kept.
    LessMemory { store: bool },
    /// The block groups asked for are too large for the memory available.
    MorePasses,
}

impl Remedy {
    /// The remedy in plain words, appended to the message as is.
    pub fn words(self) -> &'static str {
        match self {
            Remedy::Replace => " (ask to replace it)",
            Remedy::Resume => " (rerun resuming from it)",
            Remedy::LessMemory { store: true } => "; lower it with the recompute memory mode, a shorter sequence or bf16 weights (or force the run to try anyway)",
            Remedy::LessMemory { store: false } => "; lower it with a shorter sequence or bf16 weights (or force the run to try anyway)",
            Remedy::MorePasses => "; ask for more passes over the data, or let the memory plan choose them",
        }
    }
}

/// Marker carried inside an anyhow chain; invisible in the message itself.
#[derive(Debug)]
struct Tagged {
    kind: Kind,
    setting: Option<Setting>,
    remedy: Option<Remedy>,
    msg: String,
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.setting {
            write!(f, "{} ", s.what())?;
        }
        f.write_str(&self.msg)?;
        f.write_str(self.remedy.map_or("", Remedy::words))
    }
}

impl std::error::Error for Tagged {}

/// An error of the given kind with a message.
pub fn err(kind: Kind, msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Tagged {
        kind,
        setting: None,
        remedy: None,
        msg: msg.into(),
    })
}

/// An error of `kind` that the user can act on: `msg` is followed by the remedy (see [`Remedy`]).
pub fn with_remedy(kind: Kind, msg: impl Into<String>, remedy: Remedy) -> anyhow::Error {
    anyhow::Error::new(Tagged {
        kind,
        setting: None,
        remedy: Some(remedy),
        msg: msg.into(),
    })
}

/// A usage error about one chosen value: `detail` follows the value's name (see [`Setting`]).
pub fn invalid(setting: Setting, detail: impl Into<String>) -> anyhow::Error {
    about(Kind::Usage, setting, detail)
}

/// An error of `kind` caused by one chosen value (e.g. data too short for the sequence length).
pub fn about(kind: Kind, setting: Setting, detail: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Tagged {
        kind,
        setting: Some(setting),
        remedy: None,
        msg: detail.into(),
    })
}

/// `invalid!(SeqLen, "{n} is larger than ...")`: return a usage error about one value.
#[macro_export]
macro_rules! invalid {
    ($setting:ident, $($arg:tt)*) => {
        return Err($crate::error::invalid($crate::error::Setting::$setting, format!($($arg)*)))
    };
}

/// Say an error's tagged link again with `say(setting, remedy, message)` (`None`: leave it),
/// keeping its kind and the context around it. The CLI names its flags this way.
pub fn reword(
    e: anyhow::Error,
    say: impl Fn(Option<Setting>, Option<Remedy>, &str) -> Option<String>,
) -> anyhow::Error {
    let Some(t) = e.chain().find_map(|c| c.downcast_ref::<Tagged>()) else {
        return e;
    };
    let Some(new) = say(t.setting, t.remedy, &t.msg) else {
        return e;
    };
    let full = format!("{e:#}").replacen(&t.to_string(), &new, 1);
    err(t.kind, full)
}

/// `bail!` for user-facing errors: `fail!(Input, "config.json: ...")`.
#[macro_export]
macro_rules! fail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::error::err($crate::error::Kind::$kind, format!($($arg)*)))
    };
}

/// Extension to tag any error (and its context chain) with a kind.
pub trait Tag<T> {
    fn tag(self, kind: Kind) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> Tag<T> for Result<T, E> {
    fn tag(self, kind: Kind) -> anyhow::Result<T> {
        self.map_err(|e| {
            let e: anyhow::Error = e.into();
            if kind_of(&e).is_some() {
                e
            } else {
                let msg = format!("{e:#}");
                err(kind, msg)
            }
        })
    }
}

/// The kind of an error chain, if any link carries one.
pub fn kind_of(e: &anyhow::Error) -> Option<Kind> {
    e.chain()
        .find_map(|c| c.downcast_ref::<Tagged>().map(|t| t.kind))
}

/// Exit code for an error chain (1 when untagged).
pub fn exit_code(e: &anyhow::Error) -> i32 {
    kind_of(e).map(Kind::exit_code).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn domain_errors_say_values_and_remedies_in_words() {
        let e = invalid(Setting::SeqLen, "600 is larger than the model's context");
        assert_eq!(
            e.to_string(),
            "sequence length 600 is larger than the model's context"
        );
        let e = with_remedy(Kind::Output, "out.st already exists", Remedy::Replace);
        assert_eq!(e.to_string(), "out.st already exists (ask to replace it)");
        assert!(!e.to_string().contains("--"));
        assert_eq!(exit_code(&e), 4);
    }

    #[test]
    fn reword_keeps_the_kind_and_the_context_around() {
        let e = with_remedy(Kind::Interrupted, "checkpoint written", Remedy::Resume);
        let e = Err::<(), _>(e).context("attributing").unwrap_err();
        let r = reword(e, |_, r, msg| Some(format!("{msg} [{r:?}]")));
        assert_eq!(
            format!("{r:#}"),
            "attributing: checkpoint written [Some(Resume)]"
        );
        assert_eq!(exit_code(&r), 130);
        let plain = err(Kind::Input, "bad");
        let r = reword(plain, |s, r, _| {
            (s.is_some() || r.is_some()).then(String::new)
        });
        assert_eq!(format!("{r:#}"), "bad");
    }
}
