//! tapio-profile: Evidence Profiles, the versioned document operators tune Tapio with.
//!
//! A profile names a builtin `base` and optionally overrides any threshold or switch of the
//! observers. This crate validates it (unknown fields, types, ranges and cross-field rules,
//! each error naming the field's path and what is allowed) and compiles it into the
//! tapio-wire [`CompiledConfig`] the controller serves and the agents apply.
//!
//! It is pure: no I/O, no async, no HTTP, no YAML. Callers read the file and deserialize
//! it into a [`Document`] with the serde format of their choice (the controller and the
//! `tapio` CLI accept YAML and JSON), then call [`validate()`] or [`compile()`].
//!
//! ```
//! use tapio_profile::{compile, Document, Value};
//! let doc = Document::new(Value::map([
//!     ("apiVersion", Value::from("tapio.dev/v1alpha1")),
//!     ("kind", Value::from("EvidenceProfile")),
//!     ("metadata", Value::map([("name", Value::from("web"))])),
//!     ("base", Value::from("quiet")),
//!     ("overrides", Value::map([("storage", Value::map([("latency_warning_ms", Value::from(300u64))]))])),
//! ]));
//! let config = compile(&doc).unwrap();
//! assert_eq!(config.storage.latency_warning_ms, 300);
//! ```
//!
//! The same table is the schema of the agent's local config file: its `[network]`,
//! `[container]`, `[storage]` and `[node]` sections are overrides on `production-default`,
//! compiled with [`overlay()`]; a config the controller served is checked with [`check()`].
//!
//! Compilation is deterministic: the same document gives the same config, hence the same
//! canonical bytes ([`CompiledConfig::canonical_json`]) and the same `sha256:` hash
//! wherever it is computed. Lists are sorted and deduplicated, so the order an operator
//! writes them in does not change the hash.
//!
//! Modules: [`value`] (the parsed tree), [`validate`](mod@validate) (the rules),
//! [`fields`] (the table of every settable field), [`builtins`], [`diff`](mod@diff) and
//! [`error`].

pub mod builtins;
pub mod diff;
pub mod error;
pub mod fields;
pub mod validate;
pub mod value;

pub use builtins::Builtin;
pub use diff::{diff, FieldDiff};
pub use error::{ProfileError, Range};
pub use fields::{Field, FieldValue, Kind, FIELDS};
pub use tapio_wire::CompiledConfig;
pub use validate::{check, overlay, validate};
pub use value::{Document, Value};

/// The only `apiVersion` this build reads.
pub const API_VERSION: &str = "tapio.dev/v1alpha1";
/// The document's `kind`.
pub const KIND: &str = "EvidenceProfile";

/// A validated profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.description`.
    pub description: Option<String>,
    /// The builtin it starts from.
    pub base: Builtin,
    /// `section.field` of every override, in document order.
    pub overridden: Vec<String>,
    config: CompiledConfig,
}

impl Profile {
    /// A builtin as a profile of its own (no overrides).
    pub fn builtin(base: Builtin) -> Profile {
        Profile {
            name: base.name().to_string(),
            description: None,
            base,
            overridden: Vec::new(),
            config: base.config(),
        }
    }

    /// The compiled config: the base with the overrides laid over it.
    pub fn compile(&self) -> CompiledConfig {
        self.config.clone()
    }
}

/// Validates `doc` and compiles it in one step.
pub fn compile(doc: &Document) -> Result<CompiledConfig, ProfileError> {
    validate(doc).map(|p| p.compile())
}
