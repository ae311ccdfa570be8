//! Field-level differences between two compiled configs, in the order of the field table.

use tapio_wire::CompiledConfig;

use crate::fields::{FieldValue, FIELDS};

/// One field whose value differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    /// `section.field`.
    pub path: String,
    /// Its value in the first config.
    pub a: FieldValue,
    /// Its value in the second config.
    pub b: FieldValue,
}

/// Every field whose value differs between `a` and `b` (empty when they are equal).
pub fn diff(a: &CompiledConfig, b: &CompiledConfig) -> Vec<FieldDiff> {
    FIELDS
        .iter()
        .filter_map(|f| {
            let (va, vb) = (f.get(a), f.get(b));
            (va != vb).then(|| FieldDiff { path: f.key(), a: va, b: vb })
        })
        .collect()
}
