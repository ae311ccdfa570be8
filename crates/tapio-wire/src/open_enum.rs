//! Enums a receiver parses, each with a catch-all that keeps the unknown string.
//!
//! v1 is additive: a newer sender may use a value this build has never heard of. Rejecting
//! the whole payload for that would drop evidence, so every such enum has an
//! `Other(String)` variant that preserves the value and serializes it back unchanged.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Defines a string enum with known variants plus `Other(String)`.
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this build does not know, kept verbatim.
            Other(String),
        }

        impl $name {
            /// The wire spelling of this value.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $text, )+
                    Self::Other(s) => s.as_str(),
                }
            }

            /// True when the value is one this build knows.
            pub fn is_known(&self) -> bool {
                !matches!(self, Self::Other(_))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $( $text => Self::$variant, )+
                    other => Self::Other(other.to_string()),
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match s.as_str() {
                    $( $text => Self::$variant, )+
                    _ => Self::Other(s),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(OpenVisitor::<$name>::new(stringify!($name)))
            }
        }
    };
}

/// Visitor shared by the open enums: accepts any string, converts with `From`.
struct OpenVisitor<T> {
    what: &'static str,
    _t: std::marker::PhantomData<T>,
}

impl<T> OpenVisitor<T> {
    fn new(what: &'static str) -> Self {
        Self { what, _t: std::marker::PhantomData }
    }
}

impl<T: From<String> + for<'a> From<&'a str>> Visitor<'_> for OpenVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a string ({})", self.what)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok(T::from(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        Ok(T::from(v))
    }
}

open_enum! {
    /// The state an agent reports for one observer in a heartbeat.
    ObserverStatus {
        /// Attached and producing evidence.
        Running => "running",
        /// Turned off by config.
        Disabled => "disabled",
        /// Running with reduced coverage (see the degraded reasons).
        Degraded => "degraded",
        /// Could not start or stopped on an error.
        Failed => "failed",
    }
}

open_enum! {
    /// Why an agent reports itself degraded.
    DegradedReason {
        /// The agent has not applied any controller config yet.
        Unconfigured => "unconfigured",
    }
}

open_enum! {
    /// Severity of a WireEvent.
    Severity {
        /// Diagnostic detail.
        Debug => "debug",
        /// Informational.
        Info => "info",
        /// Worth a look.
        Warning => "warning",
        /// Something failed.
        Error => "error",
        /// Something failed badly.
        Critical => "critical",
    }
}

open_enum! {
    /// Outcome of the kernel operation an event is about (extension field).
    Outcome {
        /// The operation failed.
        Failure => "failure",
        /// The operation timed out.
        Timeout => "timeout",
        /// The operation completed, worse than its threshold.
        Degraded => "degraded",
        /// Not known.
        Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_values_round_trip() {
        let s: Severity = serde_json::from_str("\"warning\"").unwrap();
        assert_eq!(s, Severity::Warning);
        let s: Severity = serde_json::from_str("\"catastrophic\"").unwrap();
        assert_eq!(s, Severity::Other("catastrophic".into()));
        assert!(!s.is_known());
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"catastrophic\"");
    }

    #[test]
    fn non_string_is_rejected() {
        assert!(serde_json::from_str::<ObserverStatus>("3").is_err());
    }

    #[test]
    fn escaped_strings_parse() {
        let s: ObserverStatus = serde_json::from_str("\"runn\\u0069ng\"").unwrap();
        assert_eq!(s, ObserverStatus::Running);
    }
}
