//! [`ProfileError`]: why a document is not a usable Evidence Profile. Every variant names
//! the field at fault by its path in the document (`overrides.storage.latency_critical_ms`,
//! `overrides.container.exit_ignore_codes[2]`) and, where there is one, what is allowed.
//! [`ProfileError::code`] is a stable identifier for scripts.

use std::fmt;

use crate::{API_VERSION, KIND};

/// The integer values a field accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Smallest accepted value (besides 0 when `zero_means_off`).
    pub min: u64,
    /// Largest accepted value.
    pub max: u64,
    /// 0 is accepted too, and turns the feature off.
    pub zero_means_off: bool,
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.zero_means_off && self.min > 0 {
            write!(f, "0 (off) or {}..={}", self.min, self.max)
        } else {
            write!(f, "{}..={}", self.min, self.max)
        }
    }
}

impl Range {
    /// True when `v` is accepted.
    pub fn contains(&self, v: i128) -> bool {
        (self.zero_means_off && v == 0) || (i128::from(self.min)..=i128::from(self.max)).contains(&v)
    }
}

/// A document that is not a valid Evidence Profile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// `apiVersion` is present but not one this build reads. Checked first: another
    /// version may have another shape, so nothing else is judged.
    #[error("apiVersion: {found:?} is not supported; this build reads {API_VERSION:?}")]
    UnsupportedApiVersion {
        /// What the document says.
        found: String,
    },
    /// `kind` is present but not `EvidenceProfile`.
    #[error("kind: {found:?} is not {KIND:?}")]
    WrongKind {
        /// What the document says.
        found: String,
    },
    /// A required field is absent.
    #[error("{path}: required field is missing")]
    Missing {
        /// Where it belongs.
        path: String,
    },
    /// A key this version does not know (most often a typo).
    #[error("{path}: unknown field{}; allowed here: {}", did_you_mean(*.suggestion), .allowed.join(", "))]
    UnknownField {
        /// The unknown key's path.
        path: String,
        /// The closest allowed key, when one is close.
        suggestion: Option<&'static str>,
        /// Every key allowed at that level.
        allowed: Vec<&'static str>,
    },
    /// A value of the wrong type.
    #[error("{path}: expected {expected}, found {found}")]
    WrongType {
        /// The field.
        path: String,
        /// What the field takes.
        expected: &'static str,
        /// What the document has.
        found: &'static str,
    },
    /// An integer outside the field's range.
    #[error("{path}: {value} is out of range; allowed: {range}")]
    OutOfRange {
        /// The field (or list item).
        path: String,
        /// The value given.
        value: i128,
        /// What is allowed.
        range: Range,
    },
    /// `base` names no builtin profile.
    #[error("base: {found:?} is not a builtin profile; builtins: {}", .known.join(", "))]
    UnknownBase {
        /// What the document says.
        found: String,
        /// The builtin names.
        known: Vec<&'static str>,
    },
    /// Two fields that are each in range but contradict each other (after the overrides
    /// are laid over the base).
    #[error("{path}: {message}")]
    CrossField {
        /// The overridden field of the pair (or the one the rule is about).
        path: String,
        /// The rule, with both values.
        message: String,
    },
    /// Any other invalid value: a malformed name, a duplicate key, a list too long.
    #[error("{path}: {message}")]
    Invalid {
        /// The field.
        path: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

fn did_you_mean(s: Option<&'static str>) -> String {
    s.map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default()
}

impl ProfileError {
    /// The path of the field at fault (`apiVersion`, `kind`, `base`, `metadata.name`,
    /// `overrides.<section>.<field>`; empty for the document root).
    pub fn path(&self) -> &str {
        match self {
            Self::UnsupportedApiVersion { .. } => "apiVersion",
            Self::WrongKind { .. } => "kind",
            Self::UnknownBase { .. } => "base",
            Self::Missing { path }
            | Self::UnknownField { path, .. }
            | Self::WrongType { path, .. }
            | Self::OutOfRange { path, .. }
            | Self::CrossField { path, .. }
            | Self::Invalid { path, .. } => path,
        }
    }

    /// A stable SCREAMING_SNAKE identifier of the variant, for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnsupportedApiVersion { .. } => "UNSUPPORTED_API_VERSION",
            Self::WrongKind { .. } => "WRONG_KIND",
            Self::Missing { .. } => "MISSING_FIELD",
            Self::UnknownField { .. } => "UNKNOWN_FIELD",
            Self::WrongType { .. } => "WRONG_TYPE",
            Self::OutOfRange { .. } => "OUT_OF_RANGE",
            Self::UnknownBase { .. } => "UNKNOWN_BASE",
            Self::CrossField { .. } => "CROSS_FIELD",
            Self::Invalid { .. } => "INVALID_VALUE",
        }
    }
}
