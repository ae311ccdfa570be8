//! Canonical JSON: the byte form that config hashes are computed over.
//!
//! Rules: object keys sorted by their UTF-8 bytes, no insignificant whitespace, strings
//! escaped as `serde_json` escapes them, numbers as `serde_json` prints them (configs hold
//! integers only). The sort is done here rather than relied upon from `serde_json::Map`,
//! because a dependency elsewhere in the build could enable `preserve_order` and silently
//! change the map's iteration order.

use serde::Serialize;
use serde_json::Value;

/// Canonical bytes of any serializable value.
///
/// A value that cannot be represented as JSON (a map with non-string keys, say) yields
/// `null`: the types this is used with cannot produce that.
pub fn to_canonical_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let value = serde_json::to_value(value).unwrap_or(Value::Null);
    let mut out = Vec::with_capacity(256);
    write_value(&value, &mut out);
    out
}

/// Canonical bytes of a JSON value.
pub fn value_to_canonical_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out);
    out
}

/// One step of the explicit-stack writer.
enum Step<'a> {
    Value(&'a Value),
    Raw(&'static [u8]),
    Key(&'a str),
}

/// Writes `value`; uses an explicit stack so a deep value cannot exhaust the call stack.
fn write_value(value: &Value, out: &mut Vec<u8>) {
    let mut stack = vec![Step::Value(value)];
    while let Some(step) = stack.pop() {
        match step {
            Step::Raw(bytes) => out.extend_from_slice(bytes),
            Step::Key(k) => {
                write_string(k, out);
                out.push(b':');
            }
            Step::Value(Value::Array(items)) => {
                out.push(b'[');
                stack.push(Step::Raw(b"]"));
                // Pushed in reverse so they pop in order.
                for (i, item) in items.iter().enumerate().rev() {
                    stack.push(Step::Value(item));
                    if i > 0 {
                        stack.push(Step::Raw(b","));
                    }
                }
            }
            Step::Value(Value::Object(map)) => {
                out.push(b'{');
                stack.push(Step::Raw(b"}"));
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                for (i, (k, v)) in entries.into_iter().enumerate().rev() {
                    stack.push(Step::Value(v));
                    stack.push(Step::Key(k));
                    if i > 0 {
                        stack.push(Step::Raw(b","));
                    }
                }
            }
            Step::Value(Value::String(s)) => write_string(s, out),
            Step::Value(scalar) => {
                // null, bool and numbers have a single compact spelling.
                out.extend_from_slice(scalar.to_string().as_bytes());
            }
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_at_every_level_and_keeps_array_order() {
        let v = json!({"b": [3, {"z": 1, "a": "x\"y"}, 1], "a": null, "c": true});
        let bytes = value_to_canonical_vec(&v);
        assert_eq!(String::from_utf8(bytes).unwrap(), r#"{"a":null,"b":[3,{"a":"x\"y","z":1},1],"c":true}"#);
    }

    #[test]
    fn empty_containers() {
        assert_eq!(value_to_canonical_vec(&json!({"a": {}, "b": []})), br#"{"a":{},"b":[]}"#);
    }

    #[test]
    fn key_order_of_input_does_not_matter() {
        let a: Value = serde_json::from_str(r#"{"x":1,"y":{"q":2,"p":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "y": {"p":3, "q":2}, "x": 1 }"#).unwrap();
        assert_eq!(value_to_canonical_vec(&a), value_to_canonical_vec(&b));
    }
}
