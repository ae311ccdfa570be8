//! The facts-not-reasoning boundary: keys at any depth, in objects and arrays, any case,
//! with or without separators; hostile depth.

use serde_json::{json, Map, Value};
use tapio_wire::reasoning::{find_reasoning, is_reasoning_key, REASONING_KEYS};

fn facts(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("facts must be an object"),
    }
}

#[test]
fn every_listed_key_in_many_spellings() {
    let spellings: [fn(&str) -> String; 5] = [
        |k| k.to_string(),
        |k| k.to_uppercase(),
        |k| {
            // snake_case between every letter pair at position 4
            let (a, b) = k.split_at(4);
            format!("{a}_{b}")
        },
        |k| {
            let (a, b) = k.split_at(3);
            format!("-{}-{}_", a.to_uppercase(), b)
        },
        |k| {
            let mut c = k.chars();
            let first = c.next().unwrap().to_ascii_uppercase();
            format!("{first}{}", c.as_str())
        },
    ];
    for key in REASONING_KEYS {
        for spell in spellings {
            let s = spell(key);
            assert!(is_reasoning_key(&s), "{s} should be reasoning");
        }
    }
    for s in ["root_cause", "RootCause", "root-cause", "ROOT__CAUSE", "Suggested-Fix", "possible_causes"] {
        assert!(is_reasoning_key(s), "{s}");
    }
}

#[test]
fn near_misses_are_not_reasoning() {
    for s in [
        "reason",
        "rootcauses",
        "root cause",
        "root.cause",
        "cause",
        "explanations",
        "errno",
        "",
        "_",
        "recommendation_id_that_is_long",
        "reasoningx",
    ] {
        assert!(!is_reasoning_key(s), "{s:?} must not match");
    }
}

#[test]
fn unicode_case_folding_is_applied() {
    // U+212A KELVIN SIGN lowercases to ASCII 'k'; no listed key has a k, so no match,
    // but the fold must not panic or mis-handle multi-char lowercase expansions.
    assert!(!is_reasoning_key("\u{212A}ernel"));
    assert!(!is_reasoning_key("\u{130}reasoning")); // İ lowercases to two chars
    assert!(is_reasoning_key("RE\u{41}SONING")); // 'A' written as an escape
                                                 // U+017F LATIN SMALL LETTER LONG S case-folds to 's' (it has no lowercase of its own).
    assert!(is_reasoning_key("rea\u{17F}oning"));
    assert!(is_reasoning_key("root_cau\u{17F}e"));
}

#[test]
fn found_in_nested_objects() {
    let f = facts(json!({"pid": 1, "details": {"inner": {"Root_Cause": "x"}}}));
    let hit = find_reasoning(&f).unwrap();
    assert_eq!(hit.key, "Root_Cause");
    assert_eq!(hit.path, "facts.details.inner.Root_Cause");
}

#[test]
fn found_inside_arrays() {
    let f = facts(json!({"items": [1, "two", {"ok": true}, {"list": [[{"EXPLANATION": 1}]]}]}));
    let hit = find_reasoning(&f).unwrap();
    assert_eq!(hit.key, "EXPLANATION");
    assert_eq!(hit.path, "facts.items[3].list[0][0].EXPLANATION");
}

#[test]
fn found_at_top_level() {
    let hit = find_reasoning(&facts(json!({"remediation": "restart"}))).unwrap();
    assert_eq!(hit.path, "facts.remediation");
}

#[test]
fn values_are_not_keys() {
    // Reasoning words as values are facts about strings, not reasoning fields.
    let f = facts(json!({"comm": "reasoning", "args": ["root_cause", "explanation"]}));
    assert_eq!(find_reasoning(&f), None);
}

#[test]
fn clean_facts_pass() {
    let f = facts(json!({"pid": 1, "comm": "curl", "dst": {"addr": "10.0.0.1", "port": 80},
        "samples": [{"srtt_us": 10}, {"srtt_us": 12}]}));
    assert_eq!(find_reasoning(&f), None);
}

/// Builds `depth` levels alternating objects and arrays, with `leaf` innermost.
fn deep(depth: usize, leaf: Value) -> Value {
    let mut v = leaf;
    for i in 0..depth {
        // Built by hand: `json!` would re-serialize `v` recursively.
        v = if i % 2 == 0 {
            Value::Array(vec![v])
        } else {
            let mut m = Map::new();
            m.insert("n".into(), v);
            Value::Object(m)
        };
    }
    v
}

/// Takes a deep value apart level by level: serde_json's own Drop recurses and would
/// overflow the test thread's stack on a value this deep.
fn dismantle(mut v: Value) {
    loop {
        v = match v {
            Value::Array(mut a) => match a.pop() {
                Some(inner) => inner,
                None => return,
            },
            Value::Object(mut m) => match m.remove("n") {
                Some(inner) => inner,
                None => return,
            },
            _ => return,
        };
    }
}

#[test]
fn hostile_depth_does_not_blow_the_stack() {
    // Far deeper than any recursion could survive on a 2 MiB test thread stack.
    const DEPTH: usize = 200_000;
    let mut root = Map::new();
    root.insert("n".into(), deep(DEPTH, json!({"causal_chain": []})));
    let hit = find_reasoning(&root).unwrap_or_else(|| {
        std::process::abort() // a panic would unwind through the deep drop
    });
    let key_ok = hit.key == "causal_chain";
    // Check without panicking first: a panic here would unwind through the deep drop.
    let path_ok = hit.path.starts_with("facts.n.n[0].n[0]")
        && hit.path.ends_with("[0].causal_chain")
        && hit.path.matches("[0]").count() == DEPTH / 2;

    let mut clean = Map::new();
    clean.insert("n".into(), deep(DEPTH, json!({"pid": 1})));
    let clean_ok = find_reasoning(&clean).is_none();

    for (_, v) in root.into_iter().chain(clean) {
        dismantle(v);
    }
    assert!(key_ok, "wrong key {}", hit.key);
    assert!(path_ok, "unexpected path shape");
    assert!(clean_ok, "clean deep facts reported as reasoning");
}

#[test]
fn parser_depth_limit_is_a_malformed_body_not_a_crash() {
    // serde_json refuses more than 128 nested levels; the body is then MALFORMED_JSON.
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let body = format!(
        r#"{{"wire_version":"tapio-wire/v1","agent_id":"a","node_name":"n","sequence":1,
        "sent_at_unix_nanos":1,"events":[{{"type":"kernel.x.y","observer":"x",
        "severity":"info","timestamp_unix_nanos":1,"facts":{{"a":{nested}}}}}]}}"#
    );
    let err = tapio_wire::validate::parse_body::<tapio_wire::EventBatch>(body.as_bytes()).unwrap_err();
    assert_eq!(err.code(), tapio_wire::ErrorCode::MalformedJson);
}
