//! Turns an accepted batch into evidence records (evidence.md's one record shape), one
//! JSON object per line.
//!
//! Every field the agent sent is carried as sent. Two fields are filled when absent, both
//! from facts the batch already states: `node` from the batch's `node_name`, and
//! `timestamp` rendered from `timestamp_unix_nanos`. Nothing is inferred.

use tapio_wire::{EventBatch, WireEvent};

use tapio_util::time::rfc3339_nanos;

/// Completes one event's record fields from its batch.
pub fn complete(event: &mut WireEvent, node_name: &str) {
    if event.node.as_deref().is_none_or(|n| n.trim().is_empty()) {
        event.node = Some(node_name.to_string());
    }
    if event.timestamp.is_none() {
        event.timestamp = Some(rfc3339_nanos(event.timestamp_unix_nanos));
    }
}

/// Encodes a validated batch as JSON lines. Returns the bytes and the number of records.
pub fn encode_batch(batch: EventBatch) -> (Vec<u8>, u64) {
    let EventBatch { node_name, events, .. } = batch;
    let mut out = Vec::with_capacity(events.len() * 384);
    let mut n = 0;
    for mut event in events {
        complete(&mut event, &node_name);
        // A WireEvent holds only strings, integers and JSON values: it always serializes.
        if serde_json::to_writer(&mut out, &event).is_ok() {
            out.push(b'\n');
            n += 1;
        }
    }
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn fills_node_and_timestamp_only_when_absent() {
        let batch: EventBatch = serde_json::from_value(json!({
            "wire_version": "tapio-wire/v1", "agent_id": "a", "node_name": "node-a",
            "sequence": 1, "sent_at_unix_nanos": 5,
            "events": [
                {"type": "kernel.x.y", "observer": "x", "severity": "info",
                 "timestamp_unix_nanos": 0, "facts": {"k": 1}},
                {"type": "kernel.x.z", "observer": "x", "severity": "novel",
                 "timestamp_unix_nanos": 0, "node": "other", "timestamp": "as-sent",
                 "id": "01J", "config_generation": 0, "workload": {"pod_uid": "p"},
                 "facts": {}}
            ]
        }))
        .unwrap();
        let (bytes, n) = encode_batch(batch);
        assert_eq!(n, 2);
        let lines: Vec<Value> = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines[0]["node"], "node-a");
        assert_eq!(lines[0]["timestamp"], "1970-01-01T00:00:00.000000000Z");
        assert_eq!(lines[0]["facts"]["k"], 1);
        assert!(lines[0].get("workload").is_none());
        assert_eq!(lines[1]["node"], "other");
        assert_eq!(lines[1]["timestamp"], "as-sent");
        assert_eq!(lines[1]["severity"], "novel");
        assert_eq!(lines[1]["config_generation"], 0);
        assert_eq!(lines[1]["workload"]["pod_uid"], "p");
    }
}
