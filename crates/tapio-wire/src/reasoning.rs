//! The facts-not-reasoning boundary: finds reasoning keys anywhere inside event facts.
//!
//! A key is reasoning when, compared case-insensitively with `_` and `-` removed, it is one
//! of [`REASONING_KEYS`]. The walk covers objects and arrays at any depth and uses an
//! explicit heap stack, so a hostile, deeply nested payload cannot exhaust the call stack
//! whatever its depth (serde_json already caps parsing at 128 levels; values built in code
//! have no such cap).

use serde_json::Value;

/// Normalized reasoning keys (lowercase, no `_` or `-`).
pub const REASONING_KEYS: [&str; 8] = [
    "reasoning",
    "rootcause",
    "causalchain",
    "explanation",
    "possiblecauses",
    "suggestedfix",
    "remediation",
    "recommendation",
];

/// Longest entry of [`REASONING_KEYS`], so longer keys are rejected without more work.
const MAX_KEY_LEN: usize = 14;

/// Where a reasoning key was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasoningHit {
    /// The key as sent.
    pub key: String,
    /// JSON path from the facts root, e.g. `facts.details[2].Root_Cause`.
    pub path: String,
}

/// True when `key` normalizes to one of [`REASONING_KEYS`].
pub fn is_reasoning_key(key: &str) -> bool {
    let mut buf = [0u8; MAX_KEY_LEN];
    let mut len = 0;
    for c in key.chars().filter(|c| *c != '_' && *c != '-') {
        // Full Unicode lowercasing: a non-ASCII letter can fold to an ASCII one (the Kelvin
        // sign to k). The long s is already lowercase; case folding makes it s.
        for lower in c.to_lowercase() {
            let lower = if lower == '\u{17F}' { 's' } else { lower };
            if !lower.is_ascii() || len == MAX_KEY_LEN {
                return false;
            }
            buf[len] = lower as u8;
            len += 1;
        }
    }
    let normalized = &buf[..len];
    REASONING_KEYS.iter().any(|k| k.as_bytes() == normalized)
}

/// One step of a path, kept only for containers so flat facts cost nothing extra.
enum Segment<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

/// Finds the first reasoning key inside `facts` (objects and arrays, any depth).
pub fn find_reasoning(facts: &serde_json::Map<String, Value>) -> Option<ReasoningHit> {
    // trail[i] = (parent index, segment); stack frames point into it.
    let mut trail: Vec<(usize, Segment<'_>)> = vec![(usize::MAX, Segment::Root)];
    let mut stack: Vec<(&Value, usize)> = Vec::new();

    if let Some(hit) = scan_object(facts, 0, &mut trail, &mut stack) {
        return Some(hit);
    }
    while let Some((value, node)) = stack.pop() {
        let hit = match value {
            Value::Object(map) => scan_object(map, node, &mut trail, &mut stack),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if is_container(item) {
                        trail.push((node, Segment::Index(i)));
                        stack.push((item, trail.len() - 1));
                    }
                }
                None
            }
            _ => None,
        };
        if hit.is_some() {
            return hit;
        }
    }
    None
}

fn is_container(v: &Value) -> bool {
    matches!(v, Value::Object(_) | Value::Array(_))
}

fn scan_object<'a>(
    map: &'a serde_json::Map<String, Value>,
    node: usize,
    trail: &mut Vec<(usize, Segment<'a>)>,
    stack: &mut Vec<(&'a Value, usize)>,
) -> Option<ReasoningHit> {
    for (key, value) in map {
        if is_reasoning_key(key) {
            return Some(ReasoningHit { key: key.clone(), path: render_path(trail, node, key) });
        }
        if is_container(value) {
            trail.push((node, Segment::Key(key)));
            stack.push((value, trail.len() - 1));
        }
    }
    None
}

fn render_path(trail: &[(usize, Segment<'_>)], node: usize, last: &str) -> String {
    let mut segments = Vec::new();
    let mut at = node;
    while let Some((parent, seg)) = trail.get(at) {
        segments.push(seg);
        at = *parent;
    }
    let mut out = String::new();
    for seg in segments.into_iter().rev() {
        match seg {
            Segment::Root => out.push_str("facts"),
            Segment::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Segment::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out.push('.');
    out.push_str(last);
    out
}
