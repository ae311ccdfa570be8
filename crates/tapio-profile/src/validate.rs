//! Document → [`Profile`]: every rule of the Evidence Profile format, in the order a reader
//! would check them: version and kind first (another version may have another shape), then
//! the shape, each value's type and range, and last the rules between fields, judged on the
//! base with the overrides laid over it.

use tapio_wire::CompiledConfig;

use crate::builtins::Builtin;
use crate::error::{ProfileError, Range};
use crate::fields::{self, Field, FieldValue, Kind, SECTIONS};
use crate::value::{Document, Value};
use crate::{Profile, API_VERSION, KIND};

const TOP_KEYS: &[&str] = &["apiVersion", "kind", "metadata", "base", "overrides"];
const METADATA_KEYS: &[&str] = &["name", "description"];
/// Longest `metadata.name` (a DNS label's length, so it can name Kubernetes objects).
pub const MAX_NAME_LEN: usize = 63;
/// Longest `metadata.description`.
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// Checks `doc` against every rule and returns the validated profile.
pub fn validate(doc: &Document) -> Result<Profile, ProfileError> {
    let top = mapping(&doc.root, "")?;

    // Version and kind before anything else.
    let api_version = string(required(&top, "apiVersion", "")?, "apiVersion")?;
    if api_version != API_VERSION {
        return Err(ProfileError::UnsupportedApiVersion { found: api_version.to_string() });
    }
    let kind = string(required(&top, "kind", "")?, "kind")?;
    if kind != KIND {
        return Err(ProfileError::WrongKind { found: kind.to_string() });
    }
    reject_unknown(&top, TOP_KEYS, "")?;

    let metadata = mapping(required(&top, "metadata", "")?, "metadata")?;
    reject_unknown(&metadata, METADATA_KEYS, "metadata")?;
    let name = string(required(&metadata, "name", "metadata")?, "metadata.name")?;
    check_name(name)?;
    let description = match lookup(&metadata, "description") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let d = string(v, "metadata.description")?;
            if d.chars().count() > MAX_DESCRIPTION_LEN {
                return Err(ProfileError::Invalid {
                    path: "metadata.description".into(),
                    message: format!("longer than {MAX_DESCRIPTION_LEN} characters"),
                });
            }
            Some(d.to_string())
        }
    };

    let base_name = string(required(&top, "base", "")?, "base")?;
    let base = Builtin::from_name(base_name)
        .ok_or_else(|| ProfileError::UnknownBase { found: base_name.to_string(), known: Builtin::names() })?;

    let mut config = base.config();
    let mut overridden: Vec<&'static Field> = Vec::new();
    if let Some(overrides) = lookup(&top, "overrides") {
        apply_overrides(overrides, "overrides", &mut config, &mut overridden)?;
    }
    contradictions(&config, &overridden, Some(base), "overrides")?;
    silent_observers(&config)?;

    Ok(Profile {
        name: name.to_string(),
        description,
        base,
        overridden: overridden.iter().map(|f| f.key()).collect(),
        config,
    })
}

/// A mapping's entries with string keys; duplicate or non-string keys are errors.
fn mapping<'a>(v: &'a Value, path: &str) -> Result<Vec<(&'a str, &'a Value)>, ProfileError> {
    let Value::Map(entries) = v else {
        let path = if path.is_empty() { "(document)" } else { path };
        return Err(ProfileError::WrongType { path: path.to_string(), expected: "a mapping", found: v.type_name() });
    };
    let mut out: Vec<(&str, &Value)> = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let Value::Str(key) = k else {
            return Err(ProfileError::Invalid {
                path: join(path, &key_text(k)),
                message: format!("keys must be strings, found {}", k.type_name()),
            });
        };
        if out.iter().any(|(seen, _)| *seen == key) {
            return Err(ProfileError::Invalid { path: join(path, key), message: "duplicate key".into() });
        }
        out.push((key, v));
    }
    Ok(out)
}

/// A non-string key as a path segment: its value when it is a plain one. (Without float
/// or `Debug` formatting, which would cost every agent binary ~15 KB for a case that only
/// YAML can produce.)
fn key_text(k: &Value) -> String {
    match k {
        Value::Int(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_string(),
        other => format!("({})", other.type_name()),
    }
}

fn lookup<'a>(entries: &[(&str, &'a Value)], key: &str) -> Option<&'a Value> {
    entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn required<'a>(entries: &[(&str, &'a Value)], key: &str, parent: &str) -> Result<&'a Value, ProfileError> {
    lookup(entries, key).ok_or_else(|| ProfileError::Missing { path: join(parent, key) })
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, ProfileError> {
    match v {
        Value::Str(s) => Ok(s),
        other => {
            Err(ProfileError::WrongType { path: path.to_string(), expected: "a string", found: other.type_name() })
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn reject_unknown(entries: &[(&str, &Value)], allowed: &[&'static str], parent: &str) -> Result<(), ProfileError> {
    for (key, _) in entries {
        if !allowed.contains(key) {
            return Err(ProfileError::UnknownField {
                path: join(parent, key),
                suggestion: closest(key, allowed),
                allowed: allowed.to_vec(),
            });
        }
    }
    Ok(())
}

/// `metadata.name`: a DNS label, so it can name Kubernetes objects and files alike.
fn check_name(name: &str) -> Result<(), ProfileError> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars || !ok_ends {
        return Err(ProfileError::Invalid {
            path: "metadata.name".into(),
            message: format!(
                "{name:?} is not a valid name: 1..={MAX_NAME_LEN} characters of a-z, 0-9, '-' and '.', \
                 starting and ending with a letter or digit"
            ),
        });
    }
    Ok(())
}

/// Lays `sections` (a mapping of `network:`, `container:`, … to their fields) over `base`,
/// checking each value's type and range and the rules that make a config contradictory.
/// `at` is where the sections live in what the user wrote (`overrides` in a profile
/// document, `""` in the agent's TOML file), so every error names the key as written.
///
/// This is the schema the agent's local config file shares with profiles. Unlike
/// [`validate()`], it accepts an observer that is enabled with every evidence family off
/// (it starts and emits nothing), as the agent always has.
#[inline] // A caller's constant base leaves the other builtins out of its binary.
pub fn overlay(base: Builtin, sections: &Value, at: &str) -> Result<CompiledConfig, ProfileError> {
    let mut config = base.config();
    let mut overridden: Vec<&'static Field> = Vec::new();
    apply_overrides(sections, at, &mut config, &mut overridden)?;
    contradictions(&config, &overridden, Some(base), at)?;
    Ok(config)
}

/// Checks an already compiled config (one a controller served, or a saved copy of it):
/// every field's range and list length from the field table, and the rules that make a
/// config contradictory. Errors name fields as `section.field`. A config that [`compile`]
/// produced always passes.
///
/// [`compile`]: crate::compile()
pub fn check(config: &CompiledConfig) -> Result<(), ProfileError> {
    for field in fields::FIELDS {
        let path = field.key();
        match (field.kind, field.get(config)) {
            (Kind::Int(range), FieldValue::Int(n)) => in_range(i128::from(n), range, &path)?,
            (Kind::List { item, max_len }, FieldValue::List(items)) => {
                if items.len() > max_len {
                    return Err(ProfileError::Invalid {
                        path,
                        message: format!("{} items; at most {max_len} allowed", items.len()),
                    });
                }
                for (i, n) in items.iter().enumerate() {
                    in_range(i128::from(*n), item, &format!("{path}[{i}]"))?;
                }
            }
            _ => {}
        }
    }
    // Every field counts as set: the rule names its own subject, with no base to blame.
    let all: Vec<&'static Field> = fields::FIELDS.iter().collect();
    contradictions(config, &all, None, "")
}

fn in_range(n: i128, range: Range, path: &str) -> Result<(), ProfileError> {
    if range.contains(n) {
        Ok(())
    } else {
        Err(ProfileError::OutOfRange { path: path.to_string(), value: n, range })
    }
}

fn apply_overrides(
    overrides: &Value,
    at: &str,
    config: &mut CompiledConfig,
    overridden: &mut Vec<&'static Field>,
) -> Result<(), ProfileError> {
    if *overrides == Value::Null {
        return Ok(()); // `overrides:` with nothing under it
    }
    let sections = mapping(overrides, at)?;
    reject_unknown(&sections, SECTIONS, at)?;
    for (section, body) in sections {
        let section_path = join(at, section);
        if *body == Value::Null {
            continue;
        }
        let entries = mapping(body, &section_path)?;
        let allowed: Vec<&'static str> = fields::in_section(section).map(|f| f.name).collect();
        reject_unknown(&entries, &allowed, &section_path)?;
        for (key, value) in entries {
            let Some(field) = fields::find(section, key) else { continue };
            let path = join(&section_path, key);
            let typed = typed_value(field, value, &path)?;
            field.set(config, &typed);
            overridden.push(field);
        }
    }
    Ok(())
}

/// Checks type and range of one override value.
fn typed_value(field: &Field, v: &Value, path: &str) -> Result<FieldValue, ProfileError> {
    match field.kind {
        Kind::Bool => match v {
            Value::Bool(b) => Ok(FieldValue::Bool(*b)),
            other => Err(ProfileError::WrongType {
                path: path.to_string(),
                expected: "a boolean (true or false)",
                found: other.type_name(),
            }),
        },
        Kind::Int(range) => integer(v, range, path).map(FieldValue::Int),
        Kind::List { item, max_len } => {
            let Value::Seq(items) = v else {
                return Err(ProfileError::WrongType {
                    path: path.to_string(),
                    expected: "a list of integers",
                    found: v.type_name(),
                });
            };
            if items.len() > max_len {
                return Err(ProfileError::Invalid {
                    path: path.to_string(),
                    message: format!("{} items; at most {max_len} allowed", items.len()),
                });
            }
            let values = items
                .iter()
                .enumerate()
                .map(|(i, item_value)| integer(item_value, item, &format!("{path}[{i}]")))
                .collect::<Result<Vec<u64>, _>>()?;
            Ok(FieldValue::List(values))
        }
    }
}

fn integer(v: &Value, range: Range, path: &str) -> Result<u64, ProfileError> {
    let n = match v {
        Value::Int(n) => *n,
        // A whole number written with a fraction or exponent (`100.0`, `1e3`), or one too
        // large for the parser's integers (JSON beyond u64): judge its value.
        Value::Float(f) if f.is_finite() && f.fract() == 0.0 => *f as i128,
        other => {
            return Err(ProfileError::WrongType {
                path: path.to_string(),
                expected: "an integer",
                found: other.type_name(),
            })
        }
    };
    in_range(n, range, path)?;
    // In range means 0..=max of a u64 range.
    u64::try_from(n).map_err(|_| ProfileError::OutOfRange { path: path.to_string(), value: n, range })
}

/// Rules between fields that make a config contradictory, judged on the effective config.
/// The path (under `at`) names the overridden field of the pair (the base alone always
/// passes); a value that came from `base` says so.
fn contradictions(
    c: &CompiledConfig,
    overridden: &[&'static Field],
    base: Option<Builtin>,
    at: &str,
) -> Result<(), ProfileError> {
    let set = |section: &str, name: &str| overridden.iter().any(|f| f.section == section && f.name == name);
    let path = |section: &str, name: &str| join(at, &format!("{section}.{name}"));
    let origin = |section: &str, name: &str| match base {
        Some(base) if !set(section, name) => format!(" (from base {})", base.name()),
        _ => String::new(),
    };

    let st = &c.storage;
    if st.latency_critical_ms < st.latency_warning_ms {
        let at = if set("storage", "latency_critical_ms") { "latency_critical_ms" } else { "latency_warning_ms" };
        return Err(ProfileError::CrossField {
            path: path("storage", at),
            message: format!(
                "latency_critical_ms = {}{} must be at least latency_warning_ms = {}{}",
                st.latency_critical_ms,
                origin("storage", "latency_critical_ms"),
                st.latency_warning_ms,
                origin("storage", "latency_warning_ms"),
            ),
        });
    }

    Ok(())
}

/// A profile's rules against observers that would run and emit nothing (the path names the
/// section's `enabled` switch, or `node.psi`).
fn silent_observers(c: &CompiledConfig) -> Result<(), ProfileError> {
    let path = |section: &str, name: &str| format!("overrides.{section}.{name}");
    let st = &c.storage;
    // An observer switched on with every evidence family off emits nothing: almost always
    // a mistake in the overrides, and `enabled: false` says it plainly.
    let n = &c.network;
    let k = &c.container;
    let nd = &c.node;
    let psi_any = nd.psi_memory_some_avg10_percent + nd.psi_cpu_some_avg10_percent + nd.psi_io_some_avg10_percent > 0;
    let families: [(&str, bool, bool, &str); 4] = [
        (
            "network",
            n.enabled,
            n.connect_failures || n.resets || n.retransmit_spikes || n.rtt_degradation,
            "connect_failures, resets, retransmit_spikes and rtt_degradation",
        ),
        ("container", k.enabled, k.oom_kills || k.abnormal_exits, "oom_kills and abnormal_exits"),
        ("storage", st.enabled, st.io_errors || st.latency_spikes, "io_errors and latency_spikes"),
        ("node", nd.enabled, (nd.psi && psi_any) || nd.pmc, "psi (or every PSI threshold) and pmc"),
    ];
    for (section, enabled, any, names) in families {
        if enabled && !any {
            return Err(ProfileError::CrossField {
                path: path(section, "enabled"),
                message: format!(
                    "the {section} observer is enabled but {names} are all off, so it would emit nothing; \
                     set enabled: false instead"
                ),
            });
        }
    }
    if nd.enabled && nd.psi && !psi_any {
        return Err(ProfileError::CrossField {
            path: path("node", "psi"),
            message: "psi is on but every PSI threshold is 0 (off); set psi: false or a threshold".into(),
        });
    }
    Ok(())
}

/// The allowed key closest to `key`, if it is a plausible typo of it.
fn closest(key: &str, allowed: &[&'static str]) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| (edit_distance(&key, &a.to_ascii_lowercase()), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Levenshtein distance; inputs are short keys (longer ones are not typos of ours).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().take(128).collect(), b.chars().take(128).collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            closest("latency_critcal_ms", &["latency_warning_ms", "latency_critical_ms"]),
            Some("latency_critical_ms")
        );
        assert_eq!(closest("apiversion", TOP_KEYS), Some("apiVersion"));
        assert_eq!(closest("zzzz", TOP_KEYS), None);
    }
}
