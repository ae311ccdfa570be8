//! `tapio status --controller URL`: the controller's `/v1/status` as a table of agents:
//! heartbeat age, the config each applied against the one served, and loss counters.
//!
//! The agent list is fetched page by page (`?limit=&after=`, optionally `&state=`) and
//! shown as one table; a controller without paging answers everything in one page.
//!
//! The body is read as a JSON tree rather than into tapio-wire's typed structs: fields a
//! newer controller adds are shown as they come, and a missing optional one is a "-", and
//! the binary stays within its size budget (typed deserializers cost code per struct).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::http::{self, Endpoint};
use crate::{out, table};
use tapio_util::http::percent_encode;

/// Most pages fetched: far beyond any fleet (5,000 agents a page), a stop for a server
/// that keeps answering `next_after`. Reaching it is an error, as is a `next_after` that
/// does not move forward: either way what was read is only part of the fleet.
const MAX_PAGES: usize = 1_000;

pub fn run(
    controller: &str,
    as_json: bool,
    timeout_secs: u64,
    state: Option<&str>,
    page_size: usize,
) -> Result<ExitCode, String> {
    let url = http::parse_url(controller)?;
    let timeout = Duration::from_secs(timeout_secs.clamp(1, 300));
    let mut merged: Option<Value> = None;
    let mut after = String::new();
    let mut ended = false;
    for _ in 0..MAX_PAGES {
        let mut path = format!("{}?limit={page_size}", tapio_wire::paths::STATUS);
        if !after.is_empty() {
            path.push_str(&format!("&after={}", percent_encode(&after)));
        }
        if let Some(state) = state {
            path.push_str(&format!("&state={}", percent_encode(state)));
        }
        let mut page = fetch(controller, &url, &path, timeout)?;
        let next = page["next_after"].as_str().map(str::to_string);
        let agents = page["agents"].take();
        let all = merged.get_or_insert_with(|| {
            page["agents"] = Value::Array(Vec::new());
            page
        });
        if let (Some(list), Value::Array(more)) = (all["agents"].as_array_mut(), agents) {
            list.extend(more);
        }
        match next {
            Some(next) if next > after => after = next,
            // A controller that ignores paging (or is done) sends no `next_after`.
            None => {
                ended = true;
                break;
            }
            // One that does not move forward would send the same page for ever.
            Some(_) => break,
        }
    }
    let Some(mut status) = merged else {
        return Err(format!("{controller}: /v1/status sent no page"));
    };
    if !ended {
        return Err(format!(
            "{controller}: /v1/status paging did not end (after {after:?}, {MAX_PAGES} pages at most): \
             {} of {} agents read; a part of the fleet is not shown",
            status["agents"].as_array().map_or(0, Vec::len),
            num(&status["summary"]["agents_total"])
        ));
    }
    if let Some(obj) = status.as_object_mut() {
        obj.remove("next_after");
    }
    if as_json {
        out(&format!("{status}\n"));
    } else {
        out(&render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// One status page, checked to be a tapio-wire/v1 status.
fn fetch(controller: &str, url: &Endpoint, path: &str, timeout: Duration) -> Result<Value, String> {
    let resp = http::get(url, path, timeout)?;
    if (300..400).contains(&resp.status) {
        let to = table::clean(resp.header("location").unwrap_or("?"));
        return Err(format!("{controller} answered {} (redirect to {to}); redirects are not followed", resp.status));
    }
    let body: Option<Value> = serde_json::from_slice(&resp.body).ok();
    if resp.status != 200 {
        let e = body.as_ref().map(|b| &b["error"]);
        let detail = e.map(|e| format!(" {} {}", text(&e["code"]), text(&e["message"]))).unwrap_or_default();
        return Err(format!("{controller} answered HTTP {}{detail}", resp.status));
    }
    body.filter(|b| b["wire_version"] == tapio_wire::WIRE_VERSION && b["agents"].is_array())
        .ok_or_else(|| format!("{controller}: /v1/status did not answer a tapio-wire/v1 status"))
}

/// A string field ([`table::clean`]ed: it is printed), or "-".
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => table::clean(s),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".into(), |n| n.to_string())
}

/// `sha256:` plus the first 12 hex digits: enough to tell configs apart at a glance.
fn short(hash: &str) -> String {
    match hash.strip_prefix("sha256:") {
        Some(hex) => format!("sha256:{}", hex.get(..12).unwrap_or(hex)),
        None if hash.is_empty() => "-".into(),
        None => table::truncate(hash, 19),
    }
}

fn age(secs: Option<u64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7_200 => format!("{}m", s / 60),
        Some(s) => format!("{}h", s / 3_600),
    }
}

/// Where an agent stands against the target config.
#[derive(PartialEq)]
enum ConfigState {
    Current,
    Outdated,
    Unreported,
}

fn config_state(a: &Value, target: &str) -> ConfigState {
    if a["last_heartbeat_age_seconds"].as_u64().is_none() {
        return ConfigState::Unreported;
    }
    // The controller's own verdict when it gives one, else compare the hashes here.
    let current = a["config_current"].as_bool().unwrap_or(a["reported_config_hash"] == target);
    if current {
        ConfigState::Current
    } else {
        ConfigState::Outdated
    }
}

/// Observers that are not running, `name:state`.
fn observers(a: &Value) -> String {
    let Some(map) = a["observers"].as_object().filter(|m| !m.is_empty()) else {
        return "-".into();
    };
    let off: Vec<String> =
        map.iter().filter(|(_, s)| *s != "running").map(|(n, s)| format!("{n}:{}", text(s))).collect();
    if off.is_empty() {
        "all running".into()
    } else {
        off.join(",")
    }
}

pub fn render(s: &Value) -> String {
    let target = s["config"]["config_hash"].as_str().unwrap_or("");
    let empty = Vec::new();
    let agents = s["agents"].as_array().unwrap_or(&empty);
    let count = |st: ConfigState| agents.iter().filter(|a| config_state(a, target) == st).count();
    let totals = &s["totals"];
    let fleet = &s["summary"];
    let fleet_line = if fleet.is_object() {
        format!(
            "fleet: {} agents ({} registered, {} unregistered), {} stale, {} degraded\n",
            num(&fleet["agents_total"]),
            num(&fleet["registered"]),
            num(&fleet["unregistered"]),
            num(&fleet["stale"]),
            num(&fleet["degraded"]),
        )
    } else {
        String::new()
    };
    let mut text_out = format!(
        "controller {}  target config generation {} {}\n{} agents: {} current, {} outdated, {} unreported; \
         {} events accepted, {} rejected\n{fleet_line}\n",
        text(&s["controller_id"]),
        text(&s["config"]["version"]),
        table::clean(target),
        agents.len(),
        count(ConfigState::Current),
        count(ConfigState::Outdated),
        count(ConfigState::Unreported),
        num(&totals["accepted_events_total"]),
        num(&totals["rejected_events_total"]),
    );
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let c = &a["reported_counters"];
            let applied = match config_state(a, target) {
                ConfigState::Unreported => "unreported".to_string(),
                st => format!(
                    "{} {} {}",
                    text(&a["reported_config_version"]),
                    short(a["reported_config_hash"].as_str().unwrap_or("")),
                    if st == ConfigState::Current { "current" } else { "OUTDATED" }
                ),
            };
            vec![
                table::truncate(&text(&a["agent_id"]), 40),
                table::truncate(&text(&a["node_name"]), 40),
                age(a["last_heartbeat_age_seconds"].as_u64()),
                applied,
                num(&c["events_total"]),
                num(&c["lost_events_total"]),
                num(&c["malformed_events_total"]),
                num(&c["correlation_drops_total"]),
                num(&c["sink_drops_total"]),
                num(&c["controller_send_failures_total"]),
                num(&a["sequence"]["gaps_total"]),
                observers(a),
            ]
        })
        .collect();
    text_out.push_str(&table::render(
        &[
            "AGENT",
            "NODE",
            "HEARTBEAT",
            "APPLIED CONFIG",
            "EVENTS",
            "LOST",
            "MALFORMED",
            "CORR-DROPS",
            "SINK-DROPS",
            "SEND-FAIL",
            "SEQ-GAPS",
            "OBSERVERS",
        ],
        &rows,
    ));
    text_out
}
