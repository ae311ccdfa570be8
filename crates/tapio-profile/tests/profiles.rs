//! The Evidence Profile format end to end through serde_json (the crate is format-agnostic;
//! the controller and CLI tests cover YAML): every documented error with its path and
//! allowed range, the builtins, determinism of compilation, and the field table's coverage
//! of the compiled config.

use std::collections::BTreeSet;

use serde_json::Value as Json;
use tapio_profile::{
    check, compile, diff, overlay, validate, Builtin, CompiledConfig, Document, FieldValue, Kind, Profile,
    ProfileError, Range, FIELDS,
};

fn doc(text: &str) -> Document {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("test document is not JSON ({e}): {text}"))
}

/// A valid profile with `overrides` spliced in.
fn with_overrides(overrides: &str) -> Document {
    doc(&format!(
        r#"{{"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile","metadata":{{"name":"t"}},
            "base":"production-default","overrides":{overrides}}}"#
    ))
}

fn err(d: &Document) -> ProfileError {
    match validate(d) {
        Ok(p) => panic!("expected an error, got a valid profile {p:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_minimal_profile_is_its_base() {
    for b in Builtin::ALL {
        let d = doc(&format!(
            r#"{{"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile","metadata":{{"name":"m"}},"base":"{}"}}"#,
            b.name()
        ));
        let p = validate(&d).unwrap();
        assert_eq!(p.base, b);
        assert!(p.overridden.is_empty());
        assert_eq!(p.compile(), b.config());
        assert_eq!(Profile::builtin(b).compile(), b.config());
    }
}

#[test]
fn production_default_is_the_wire_default() {
    // A controller serving `{}` (or nothing) and one serving production-default agree.
    assert_eq!(Builtin::ProductionDefault.config(), CompiledConfig::default());
    let empty: CompiledConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(Builtin::ProductionDefault.config().canonical_json(), empty.canonical_json());
}

#[test]
fn builtins_are_distinct_and_move_thresholds_the_documented_way() {
    let (p, q, s) = (Builtin::ProductionDefault.config(), Builtin::Quiet.config(), Builtin::Sensitive.config());
    assert!(!diff(&p, &q).is_empty() && !diff(&p, &s).is_empty() && !diff(&q, &s).is_empty());
    // Quieter means a higher bar everywhere it differs, sensitive a lower one.
    assert!(q.network.retransmit_count > p.network.retransmit_count);
    assert!(s.network.retransmit_count < p.network.retransmit_count);
    assert!(q.storage.latency_warning_ms > p.storage.latency_warning_ms);
    assert!(s.storage.latency_warning_ms < p.storage.latency_warning_ms);
    assert!(q.node.psi_memory_some_avg10_percent > p.node.psi_memory_some_avg10_percent);
    assert!(s.node.pmc_ipc_min_percent > p.node.pmc_ipc_min_percent, "sensitive flags IPC drops earlier");
    assert_eq!(q.container.exit_ignore_signals, vec![13, 15]);
    assert_eq!(Builtin::from_name("quiet"), Some(Builtin::Quiet));
    assert_eq!(Builtin::from_name("loud"), None);
}

#[test]
fn every_builtin_is_inside_every_range() {
    for b in Builtin::ALL {
        let c = b.config();
        for f in FIELDS {
            match (f.kind, f.get(&c)) {
                (Kind::Bool, FieldValue::Bool(_)) => {}
                (Kind::Int(r), FieldValue::Int(n)) => {
                    assert!(r.contains(i128::from(n)), "{} {}: {n}", b.name(), f.key())
                }
                (Kind::List { item, max_len }, FieldValue::List(items)) => {
                    assert!(items.len() <= max_len);
                    assert!(items.iter().all(|&n| item.contains(i128::from(n))), "{} {}", b.name(), f.key());
                }
                (k, v) => panic!("{}: kind {k:?} but value {v:?}", f.key()),
            }
        }
    }
}

#[test]
fn the_field_table_covers_every_compiled_config_field_exactly() {
    let json = serde_json::to_value(CompiledConfig::default()).unwrap();
    let mut keys = BTreeSet::new();
    for (section, body) in json.as_object().unwrap() {
        for key in body.as_object().unwrap().keys() {
            keys.insert(format!("{section}.{key}"));
        }
    }
    let table: BTreeSet<String> = FIELDS.iter().map(|f| f.key()).collect();
    assert_eq!(table.len(), FIELDS.len(), "no field listed twice");
    assert_eq!(table, keys, "every compiled field is settable by a profile, and nothing else is");
}

#[test]
fn overrides_are_laid_over_the_base() {
    let d = doc(r#"{"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile",
        "metadata":{"name":"payments-prod","description":"quiet, but slow disks matter here"},
        "base":"quiet",
        "overrides":{"storage":{"latency_warning_ms":80,"latency_critical_ms":400},
                     "container":{"exit_ignore_codes":[42,1,42]},
                     "network":{"resets":false,"rtt_ceiling_us":0},
                     "node":{"pmc":false}}}"#);
    let p = validate(&d).unwrap();
    assert_eq!(p.name, "payments-prod");
    assert_eq!(p.description.as_deref(), Some("quiet, but slow disks matter here"));
    assert_eq!(
        p.overridden,
        [
            "storage.latency_warning_ms",
            "storage.latency_critical_ms",
            "container.exit_ignore_codes",
            "network.resets",
            "network.rtt_ceiling_us",
            "node.pmc"
        ]
    );
    let c = p.compile();
    let quiet = Builtin::Quiet.config();
    assert_eq!((c.storage.latency_warning_ms, c.storage.latency_critical_ms), (80, 400));
    assert_eq!(c.container.exit_ignore_codes, vec![1, 42], "sorted, without duplicates");
    assert_eq!(c.container.exit_ignore_signals, quiet.container.exit_ignore_signals, "not overridden: from the base");
    assert!(!c.network.resets && c.network.connect_failures);
    assert_eq!(c.network.rtt_ceiling_us, 0, "0 turns the ceiling off");
    assert_eq!(c.network.retransmit_count, quiet.network.retransmit_count);
    assert!(!c.node.pmc);
    let changed: Vec<String> = diff(&quiet, &c).into_iter().map(|d| d.path).collect();
    assert_eq!(
        changed,
        [
            "network.resets",
            "network.rtt_ceiling_us",
            "container.exit_ignore_codes",
            "storage.latency_warning_ms",
            "storage.latency_critical_ms",
            "node.pmc"
        ]
    );
}

#[test]
fn compilation_is_deterministic_whatever_the_order_written() {
    let a = with_overrides(
        r#"{"container":{"exit_ignore_codes":[3,1,2],"exit_ignore_signals":[15,13]},"storage":{"latency_warning_ms":90}}"#,
    );
    let b = with_overrides(
        r#"{"storage":{"latency_warning_ms":90},"container":{"exit_ignore_signals":[13,15,13],"exit_ignore_codes":[1,2,3]}}"#,
    );
    let (ca, cb) = (compile(&a).unwrap(), compile(&b).unwrap());
    assert_eq!(ca.canonical_json(), cb.canonical_json());
    assert_eq!(compile(&a).unwrap().canonical_json(), ca.canonical_json(), "same input, same bytes");
    let c = with_overrides(r#"{"storage":{"latency_warning_ms":91}}"#);
    assert_ne!(compile(&c).unwrap().canonical_json(), ca.canonical_json());
}

#[test]
fn empty_overrides_and_sections_are_allowed() {
    assert_eq!(compile(&with_overrides("null")).unwrap(), CompiledConfig::default());
    assert_eq!(compile(&with_overrides(r#"{"network":null,"node":{}}"#)).unwrap(), CompiledConfig::default());
}

#[test]
fn a_wrong_api_version_is_its_own_error_and_is_checked_first() {
    let d = doc(r#"{"apiVersion":"tapio.dev/v2","kind":"Something","whatever":1}"#);
    let e = err(&d);
    assert_eq!(e, ProfileError::UnsupportedApiVersion { found: "tapio.dev/v2".into() });
    assert_eq!((e.path(), e.code()), ("apiVersion", "UNSUPPORTED_API_VERSION"));
    assert_eq!(e.to_string(), r#"apiVersion: "tapio.dev/v2" is not supported; this build reads "tapio.dev/v1alpha1""#);
    let e = err(&doc(r#"{"kind":"EvidenceProfile"}"#));
    assert_eq!(e, ProfileError::Missing { path: "apiVersion".into() });
    assert_eq!(e.to_string(), "apiVersion: required field is missing");
    let e = err(&doc(r#"{"apiVersion":1}"#));
    assert_eq!(e.code(), "WRONG_TYPE");
}

#[test]
fn a_wrong_kind_is_its_own_error() {
    let e = err(&doc(r#"{"apiVersion":"tapio.dev/v1alpha1","kind":"ConfigMap","metadata":{"name":"x"}}"#));
    assert_eq!(e, ProfileError::WrongKind { found: "ConfigMap".into() });
    assert_eq!(e.to_string(), r#"kind: "ConfigMap" is not "EvidenceProfile""#);
    assert_eq!(e.code(), "WRONG_KIND");
}

#[test]
fn typos_are_unknown_fields_with_their_path_and_a_suggestion() {
    let e = err(&with_overrides(r#"{"storage":{"latency_critcal_ms":400}}"#));
    match &e {
        ProfileError::UnknownField { path, suggestion, allowed } => {
            assert_eq!(path, "overrides.storage.latency_critcal_ms");
            assert_eq!(*suggestion, Some("latency_critical_ms"));
            assert!(allowed.contains(&"latency_warning_ms"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string().starts_with(
            r#"overrides.storage.latency_critcal_ms: unknown field (did you mean "latency_critical_ms"?); allowed here: enabled, io_errors"#
        ),
        "{e}"
    );
    let e = err(&with_overrides(r#"{"dns":{"enabled":true}}"#));
    assert_eq!(e.path(), "overrides.dns");
    assert!(e.to_string().contains("allowed here: network, container, storage, node"), "{e}");
    let top = doc(r#"{"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile","metadata":{"name":"t"},
        "base":"quiet","overides":{}}"#);
    let e = err(&top);
    assert_eq!(e.path(), "overides");
    assert!(matches!(e, ProfileError::UnknownField { suggestion: Some("overrides"), .. }), "{e:?}");
    let e = err(&doc(
        r#"{"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile","metadata":{"name":"t","labels":{}},"base":"quiet"}"#,
    ));
    assert_eq!((e.path(), e.code()), ("metadata.labels", "UNKNOWN_FIELD"));
}

#[test]
fn out_of_range_values_name_the_path_and_the_allowed_range() {
    let e = err(&with_overrides(r#"{"storage":{"latency_critical_ms":0}}"#));
    assert_eq!(
        e,
        ProfileError::OutOfRange {
            path: "overrides.storage.latency_critical_ms".into(),
            value: 0,
            range: Range { min: 1, max: 3_600_000, zero_means_off: false }
        }
    );
    assert_eq!(e.to_string(), "overrides.storage.latency_critical_ms: 0 is out of range; allowed: 1..=3600000");
    let e = err(&with_overrides(r#"{"network":{"retransmit_count":-5}}"#));
    assert_eq!(e.to_string(), "overrides.network.retransmit_count: -5 is out of range; allowed: 2..=100000");
    let e = err(&with_overrides(r#"{"network":{"rtt_ceiling_us":500}}"#));
    assert_eq!(
        e.to_string(),
        "overrides.network.rtt_ceiling_us: 500 is out of range; allowed: 0 (off) or 1000..=60000000"
    );
    let e = err(&with_overrides(r#"{"node":{"psi_cpu_some_avg10_percent":101}}"#));
    assert_eq!(e.to_string(), "overrides.node.psi_cpu_some_avg10_percent: 101 is out of range; allowed: 0..=100");
    let e = err(&with_overrides(r#"{"network":{"retransmit_window_ms":18446744073709551616}}"#));
    assert_eq!(e.code(), "OUT_OF_RANGE", "beyond u64 is still a range error: {e}");
    let c = compile(&with_overrides(r#"{"network":{"retransmit_window_ms":2e3}}"#)).unwrap();
    assert_eq!(c.network.retransmit_window_ms, 2000, "a whole number written as 2e3 is 2000");
    let e = err(&with_overrides(r#"{"container":{"exit_ignore_codes":[1,256]}}"#));
    assert_eq!(e.to_string(), "overrides.container.exit_ignore_codes[1]: 256 is out of range; allowed: 1..=255");
    let e = err(&with_overrides(r#"{"container":{"exit_ignore_signals":[0]}}"#));
    assert_eq!(e.path(), "overrides.container.exit_ignore_signals[0]");
    let long: Vec<String> = (0..65).map(|_| "9".to_string()).collect();
    let e = err(&with_overrides(&format!(r#"{{"container":{{"exit_ignore_signals":[{}]}}}}"#, long.join(","))));
    assert_eq!(e.to_string(), "overrides.container.exit_ignore_signals: 65 items; at most 64 allowed");
}

#[test]
fn wrong_types_name_what_is_expected() {
    let e = err(&with_overrides(r#"{"network":{"retransmit_count":"ten"}}"#));
    assert_eq!(e.to_string(), "overrides.network.retransmit_count: expected an integer, found a string");
    let e = err(&with_overrides(r#"{"network":{"enabled":"yes"}}"#));
    assert_eq!(e.to_string(), "overrides.network.enabled: expected a boolean (true or false), found a string");
    let e = err(&with_overrides(r#"{"storage":{"latency_warning_ms":2.5}}"#));
    assert_eq!(
        e.to_string(),
        "overrides.storage.latency_warning_ms: expected an integer, found a number with a fraction"
    );
    let e = err(&with_overrides(r#"{"container":{"exit_ignore_codes":3}}"#));
    assert_eq!(e.to_string(), "overrides.container.exit_ignore_codes: expected a list of integers, found an integer");
    let e = err(&with_overrides(r#"{"storage":[1]}"#));
    assert_eq!(e.to_string(), "overrides.storage: expected a mapping, found a list");
    let e = err(&doc("[1,2]"));
    assert_eq!(e.to_string(), "(document): expected a mapping, found a list");
}

#[test]
fn cross_field_rules_name_the_overridden_field() {
    let e = err(&with_overrides(r#"{"storage":{"latency_warning_ms":500,"latency_critical_ms":200}}"#));
    assert_eq!(e.code(), "CROSS_FIELD");
    assert_eq!(
        e.to_string(),
        "overrides.storage.latency_critical_ms: latency_critical_ms = 200 must be at least latency_warning_ms = 500"
    );
    // Only the warning is overridden, above the base's critical: the warning is at fault.
    let e = err(&with_overrides(r#"{"storage":{"latency_warning_ms":2000}}"#));
    assert_eq!(
        e.to_string(),
        "overrides.storage.latency_warning_ms: latency_critical_ms = 1000 (from base production-default) \
         must be at least latency_warning_ms = 2000"
    );
    // Equal is fine.
    assert!(validate(&with_overrides(r#"{"storage":{"latency_warning_ms":1000}}"#)).is_ok());

    let e = err(&with_overrides(
        r#"{"network":{"connect_failures":false,"resets":false,"retransmit_spikes":false,"rtt_degradation":false}}"#,
    ));
    assert_eq!(e.path(), "overrides.network.enabled");
    assert!(e.to_string().contains("set enabled: false instead"), "{e}");
    assert!(validate(&with_overrides(
        r#"{"network":{"enabled":false,"connect_failures":false,"resets":false,"retransmit_spikes":false,"rtt_degradation":false}}"#
    ))
    .is_ok());
    let e = err(&with_overrides(r#"{"container":{"oom_kills":false,"abnormal_exits":false}}"#));
    assert_eq!(e.path(), "overrides.container.enabled");
    let e = err(&with_overrides(
        r#"{"node":{"psi_memory_some_avg10_percent":0,"psi_cpu_some_avg10_percent":0,"psi_io_some_avg10_percent":0}}"#,
    ));
    assert_eq!((e.path(), e.code()), ("overrides.node.psi", "CROSS_FIELD"));
}

#[test]
fn base_and_metadata_are_checked() {
    let e = err(&doc(
        r#"{"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile","metadata":{"name":"t"},"base":"loud"}"#,
    ));
    assert_eq!(
        e.to_string(),
        r#"base: "loud" is not a builtin profile; builtins: production-default, quiet, sensitive"#
    );
    assert_eq!(e.code(), "UNKNOWN_BASE");
    let e = err(&doc(r#"{"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile","metadata":{"name":"t"}}"#));
    assert_eq!(e, ProfileError::Missing { path: "base".into() });
    let e = err(&doc(r#"{"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile","base":"quiet"}"#));
    assert_eq!(e, ProfileError::Missing { path: "metadata".into() });
    let e = err(&doc(r#"{"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile","metadata":{},"base":"quiet"}"#));
    assert_eq!(e, ProfileError::Missing { path: "metadata.name".into() });
    for bad in ["", "Payments", "-x", "x-", "a b", &"a".repeat(64)] {
        let d = doc(&format!(
            r#"{{"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile","metadata":{{"name":"{bad}"}},"base":"quiet"}}"#
        ));
        let e = err(&d);
        assert_eq!((e.path(), e.code()), ("metadata.name", "INVALID_VALUE"), "{bad:?}: {e}");
    }
    let e = err(&doc(
        r#"{"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile","metadata":{"name":"t"},"base":"quiet","base":"sensitive"}"#,
    ));
    assert_eq!(e.to_string(), "base: duplicate key");
}

#[test]
fn every_error_code_is_distinct_and_documented_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for code in [
        "UNSUPPORTED_API_VERSION",
        "WRONG_KIND",
        "MISSING_FIELD",
        "UNKNOWN_FIELD",
        "WRONG_TYPE",
        "OUT_OF_RANGE",
        "UNKNOWN_BASE",
        "CROSS_FIELD",
        "INVALID_VALUE",
    ] {
        assert!(readme.contains(&format!("`{code}`")), "README lacks error code {code}");
    }
}

/// The builtins table in the README lists exactly the fields where the builtins differ,
/// with their values.
#[test]
fn the_readme_builtins_table_matches_the_builtins() {
    for readme in
        [concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"), concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")]
    {
        let text = std::fs::read_to_string(readme).unwrap();
        let configs: Vec<CompiledConfig> = Builtin::ALL.iter().map(|b| b.config()).collect();
        let mut expected = Vec::new();
        for f in FIELDS {
            let values: Vec<String> = configs.iter().map(|c| f.get(c).to_string()).collect();
            if values.iter().any(|v| *v != values[0]) {
                expected.push(format!("| `{}` | {} |", f.key(), values.join(" | ")));
            }
        }
        let header = format!("| field | {} |", Builtin::names().join(" | "));
        let start = text.find(&header).unwrap_or_else(|| panic!("{readme} lacks the builtins table header {header}"));
        let rows: Vec<&str> =
            text[start..].lines().skip(2).take_while(|l| l.starts_with('|')).map(|l| l.trim_end()).collect();
        assert_eq!(rows, expected, "{readme}: builtins table out of date");
    }
}

#[test]
fn documents_round_trip_through_json_values() {
    // A document built by a program (not parsed from text) validates the same way.
    let json: Json = serde_json::json!({"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile",
        "metadata":{"name":"x"},"base":"sensitive","overrides":{"network":{"retransmit_count":7}}});
    let d: Document = serde_json::from_value(json).unwrap();
    assert_eq!(compile(&d).unwrap().network.retransmit_count, 7);
}

/// The sections of an agent's config file, as a profile value tree.
fn sections(text: &str) -> tapio_profile::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("test sections are not JSON ({e}): {text}"))
}

#[test]
fn overlay_is_the_overrides_schema_with_paths_as_the_agent_file_writes_them() {
    let c = overlay(Builtin::ProductionDefault, &sections(r#"{"storage":{"latency_warning_ms":50}}"#), "").unwrap();
    assert_eq!(c.storage.latency_warning_ms, 50);
    assert_eq!(c.network, CompiledConfig::default().network);
    let e = overlay(Builtin::ProductionDefault, &sections(r#"{"network":{"rtt_ratio_percent":50}}"#), "").unwrap_err();
    assert_eq!(e.to_string(), "network.rtt_ratio_percent: 50 is out of range; allowed: 101..=100000");
    let e = overlay(Builtin::ProductionDefault, &sections(r#"{"netwrk":{}}"#), "").unwrap_err();
    assert_eq!((e.code(), e.path()), ("UNKNOWN_FIELD", "netwrk"));
    let e =
        overlay(Builtin::ProductionDefault, &sections(r#"{"storage":{"latency_critical_ms":50}}"#), "").unwrap_err();
    assert_eq!(e.path(), "storage.latency_critical_ms");
    assert!(e.to_string().contains("must be at least latency_warning_ms = 100 (from base production-default)"), "{e}");
    // Under `overrides` the same input gives the document's paths.
    let e = overlay(Builtin::Quiet, &sections(r#"{"node":{"pmc_min_cycles":-1}}"#), "overrides").unwrap_err();
    assert_eq!(e.path(), "overrides.node.pmc_min_cycles");
}

#[test]
fn overlay_accepts_an_observer_with_every_family_off_which_a_profile_refuses() {
    let off = r#"{"node":{"psi":false,"pmc":false}}"#;
    let c = overlay(Builtin::ProductionDefault, &sections(off), "").unwrap();
    assert!(c.node.enabled && !c.node.psi && !c.node.pmc);
    assert_eq!(err(&with_overrides(off)).path(), "overrides.node.enabled");
}

#[test]
fn check_refuses_what_no_profile_compiles_to_and_accepts_every_builtin() {
    for b in Builtin::ALL {
        check(&b.config()).unwrap_or_else(|e| panic!("{}: {e}", b.name()));
    }
    let mut c = CompiledConfig::default();
    c.network.rtt_ceiling_us = 500; // neither 0 (off) nor ≥ 1000
    let e = check(&c).unwrap_err();
    assert_eq!(e.to_string(), "network.rtt_ceiling_us: 500 is out of range; allowed: 0 (off) or 1000..=60000000");
    let mut c = CompiledConfig::default();
    c.container.exit_ignore_signals = vec![15, 64];
    assert_eq!(check(&c).unwrap_err().path(), "container.exit_ignore_signals[1]");
    let mut c = CompiledConfig::default();
    c.container.exit_ignore_codes = (1..=255).chain(1..=10).collect();
    assert_eq!(check(&c).unwrap_err().code(), "INVALID_VALUE");
    let mut c = CompiledConfig::default();
    c.storage.latency_critical_ms = 10;
    let e = check(&c).unwrap_err();
    assert_eq!(e.path(), "storage.latency_critical_ms");
    assert_eq!(
        e.to_string(),
        "storage.latency_critical_ms: latency_critical_ms = 10 must be at least latency_warning_ms = 100"
    );
}

/// The README's field table is the field table: each field's range, default and help text
/// (declared once, in `fields.rs`) as documented.
#[test]
fn the_readme_fields_table_is_the_field_table() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let header = "| section | field | allowed | production-default | meaning |";
    let start = text.find(header).expect("README lacks the fields table");
    let rows: Vec<&str> = text[start..].lines().skip(2).take_while(|l| l.starts_with('|')).collect();
    let defaults = CompiledConfig::default();
    let mut section = "";
    let expected: Vec<String> = FIELDS
        .iter()
        .map(|f| {
            let shown = if f.section == section { String::new() } else { format!("`{}` ", f.section) };
            section = f.section;
            let allowed = match f.kind {
                Kind::Bool => "bool".to_string(),
                Kind::Int(r) => r.to_string(),
                Kind::List { item, max_len } => format!("list of {item} (≤ {max_len} items)"),
            };
            format!("| {shown}| `{}` | {allowed} | {} | {} |", f.name, f.get(&defaults), f.help)
        })
        .collect();
    assert_eq!(rows, expected, "README fields table out of date");
}
