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
        }
    }
}

/// Marker carried inside an anyhow chain; invisible in the message itself.
#[derive(Debug)]
struct Tagged {
    kind: Kind,
    setting: Option<Setting>,
    msg: String,
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.setting {
            Some(s) => write!(f, "{} {}", s.what(), self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for Tagged {}

/// An error of the given kind with a message.
pub fn err(kind: Kind, msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Tagged {
        kind,
        setting: None,
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

/// The value an error is about, its detail and its kind, if it is such an error.
pub fn setting_of(e: &anyhow::Error) -> Option<(Setting, &str, Kind)> {
    e.chain().find_map(|c| {
        c.downcast_ref::<Tagged>()
            .and_then(|t| t.setting.map(|s| (s, t.msg.as_str(), t.kind)))
    })
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
