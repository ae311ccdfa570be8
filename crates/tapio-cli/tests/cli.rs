//! The built `tapio` binary on fixture files and against a real controller: every profile
//! subcommand (including the documented errors), the hash agreement with the controller,
//! `status` tables, `events` filters, malformed lines, bounded memory and `--follow`, and
//! `doctor` on this machine.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tapio");

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name).to_string_lossy().into_owned()
}

fn tapio(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run tapio")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tapio-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- profiles ----

#[test]
fn validate_accepts_a_good_profile_in_yaml_and_json() {
    let o = tapio(&["profile", "validate", &fixture("payments.yaml")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("valid Evidence Profile \"payments-prod\" (base quiet, 4 overrides:"), "{text}");
    assert!(text.contains("storage.latency_warning_ms"), "{text}");
    let v = json_out(&tapio(&["profile", "validate", "--json", &fixture("payments.json")]));
    assert_eq!(v["valid"], true);
    assert_eq!(v["base"], "quiet");
    assert_eq!(v["overrides"].as_array().unwrap().len(), 4);
    assert!(v["config_hash"].as_str().unwrap().starts_with("sha256:"));
}

/// (fixture, code, path, exact message tail).
const INVALID: &[(&str, &str, &str, &str)] = &[
    (
        "typo.yaml",
        "UNKNOWN_FIELD",
        "overrides.storage.latency_critcal_ms",
        "overrides.storage.latency_critcal_ms: unknown field (did you mean \"latency_critical_ms\"?); allowed here: \
         enabled, io_errors, latency_spikes, latency_warning_ms, latency_critical_ms",
    ),
    (
        "out_of_range.yaml",
        "OUT_OF_RANGE",
        "overrides.network.retransmit_count",
        "overrides.network.retransmit_count: 1 is out of range; allowed: 2..=100000",
    ),
    (
        "cross_field.yaml",
        "CROSS_FIELD",
        "overrides.storage.latency_warning_ms",
        "overrides.storage.latency_warning_ms: latency_critical_ms = 500 (from base sensitive) must be at least \
         latency_warning_ms = 900",
    ),
    (
        "wrong_version.yaml",
        "UNSUPPORTED_API_VERSION",
        "apiVersion",
        "apiVersion: \"tapio.dev/v2\" is not supported; this build reads \"tapio.dev/v1alpha1\"",
    ),
    ("wrong_kind.yaml", "WRONG_KIND", "kind", "kind: \"ConfigMap\" is not \"EvidenceProfile\""),
];

#[test]
fn validate_reports_each_documented_error_with_path_and_range() {
    for (file, code, path, message) in INVALID {
        let o = tapio(&["profile", "validate", &fixture(file)]);
        assert_eq!(o.status.code(), Some(1), "{file}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim_end(), format!("{}: invalid: {message}", fixture(file)), "{file}");
        let o = tapio(&["profile", "validate", "--json", &fixture(file)]);
        assert_eq!(o.status.code(), Some(1));
        let v = json_out(&o);
        assert_eq!(v["valid"], false);
        assert_eq!(v["error"]["code"], *code, "{file}");
        assert_eq!(v["error"]["path"], *path, "{file}");
        assert_eq!(v["error"]["message"], *message, "{file}");
    }
}

/// A file that was read but does not parse is an invalid profile (exit 1, code PARSE), as
/// `validate --help` promises; one that cannot be read is a failed command (exit 2).
#[test]
fn validate_reports_a_file_that_does_not_parse_as_invalid() {
    let dir = temp_dir("parse");
    let bad_json = dir.join("p.json");
    std::fs::write(&bad_json, "{\"apiVersion\": ").unwrap();
    for (file, what) in [(fixture("not_yaml.yaml"), "YAML"), (bad_json.to_string_lossy().into_owned(), "JSON")] {
        let o = tapio(&["profile", "validate", "--json", &file]);
        assert_eq!(o.status.code(), Some(1), "{file}: {}", stderr(&o));
        let v = json_out(&o);
        assert_eq!(
            (&v["valid"], &v["file"], &v["error"]["code"]),
            (&Value::Bool(false), &Value::from(file.as_str()), &Value::from("PARSE"))
        );
        assert!(v["error"]["message"].as_str().unwrap().starts_with(&format!("not valid {what}: ")), "{v}");
        let o = tapio(&["profile", "validate", &file]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains(&format!("{file}: invalid: not valid {what}")), "{}", stderr(&o));
        // Compiling it is still a failed command.
        let o = tapio(&["profile", "compile", &file]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains(&format!("{file}: not valid {what}")), "{}", stderr(&o));
    }
    let o = tapio(&["profile", "validate", "--json", "/nonexistent/p.yaml"]);
    assert_eq!((o.status.code(), stdout(&o)), (Some(2), String::new()));
    assert!(stderr(&o).contains("cannot read /nonexistent/p.yaml"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_inputs_are_command_errors() {
    let o = tapio(&["profile", "compile", "/nonexistent/p.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read /nonexistent/p.yaml"), "{}", stderr(&o));
    let o = tapio(&["profile", "compile", &fixture("evidence.jsonl")]);
    assert!(stderr(&o).contains("unknown file type; name it .yaml, .yml or .json"), "{}", stderr(&o));
    let o = tapio(&["profile", "compile", "builtin:loud"]);
    assert!(stderr(&o).contains("builtins: production-default, quiet, sensitive"), "{}", stderr(&o));
    let o = tapio(&["profile", "compile", &fixture("typo.yaml")]);
    assert_eq!(o.status.code(), Some(2), "compile of an invalid profile fails");
    assert!(stderr(&o).contains("overrides.storage.latency_critcal_ms"));
}

#[test]
fn compile_prints_the_config_and_the_same_hash_as_the_controller() {
    let o = tapio(&["profile", "compile", "--json", &fixture("payments.yaml")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json_out(&o);
    let config: tapio_wire::CompiledConfig = serde_json::from_value(v["config"].clone()).unwrap();
    assert_eq!(config.storage.latency_warning_ms, 80);
    assert_eq!(config.container.exit_ignore_codes, vec![1, 42]);
    assert_eq!(config.container.exit_ignore_signals, vec![13, 15], "from base quiet");
    // The controller's own function, in-process, over the same compiled config.
    assert_eq!(v["config_hash"], tapio_controller::config_hash::config_hash(&config));
    // And the controller's own loader reading the same file.
    let served = tapio_controller::profile::load(Path::new(&fixture("payments.yaml"))).unwrap();
    assert_eq!(v["config_hash"], tapio_controller::config_hash::config_hash(&served.config));
    // The JSON twin (keys reordered, duplicates in a list) compiles to the same bytes.
    let j = json_out(&tapio(&["profile", "compile", "--json", &fixture("payments.json")]));
    assert_eq!(j["config_hash"], v["config_hash"]);
    // Human form: the pretty config, then the hash.
    let text = stdout(&tapio(&["profile", "compile", &fixture("payments.yaml")]));
    assert!(text.contains("\"latency_warning_ms\": 80"), "{text}");
    assert!(text.trim_end().ends_with(&format!("config_hash: {}", v["config_hash"].as_str().unwrap())), "{text}");
    // Deterministic across runs.
    assert_eq!(json_out(&tapio(&["profile", "compile", "--json", &fixture("payments.yaml")])), v);
}

#[test]
fn diff_lists_exactly_the_changed_fields() {
    let o = tapio(&["profile", "diff", "builtin:quiet", &fixture("payments.yaml")]);
    assert_eq!(o.status.code(), Some(1), "profiles differ: exit 1");
    let text = stdout(&o);
    let rows: Vec<&str> = text.lines().skip(1).take_while(|l| !l.ends_with("differ")).collect();
    let fields: Vec<&str> = rows.iter().map(|r| r.split_whitespace().next().unwrap()).collect();
    assert_eq!(
        fields,
        ["network.resets", "container.exit_ignore_codes", "storage.latency_warning_ms", "storage.latency_critical_ms"],
        "{text}"
    );
    assert!(rows[1].contains("[]") && rows[1].contains("[1, 42]"), "{}", rows[1]);
    assert!(text.contains("4 fields differ"));
    let v = json_out(&tapio(&["profile", "diff", "--json", "builtin:quiet", &fixture("payments.yaml")]));
    assert_eq!(v["differences"][2], serde_json::json!({"field": "storage.latency_warning_ms", "a": 250, "b": 80}));
    assert_eq!(v["differences"][0], serde_json::json!({"field": "network.resets", "a": true, "b": false}));
    let same = tapio(&["profile", "diff", &fixture("payments.json"), &fixture("payments.yaml")]);
    assert_eq!(same.status.code(), Some(0));
    assert!(stdout(&same).starts_with("no differences: both compile to sha256:"), "{}", stdout(&same));
}

#[test]
fn help_and_usage_errors() {
    let o = tapio(&["events", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("--severity <SEV>"));
    let o = tapio(&["status"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--controller <URL>"), "{}", stderr(&o));
    let o = tapio(&["events", "--severity", "loud", &fixture("evidence.jsonl")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--severity \"loud\" is not one of debug, info, warning, error, critical"));
}

// ---- events ----

/// Data rows of an events table (the header excluded).
fn rows(o: &Output) -> Vec<String> {
    stdout(o).lines().skip(1).map(str::to_string).collect()
}

#[test]
fn events_table_counts_and_reports_malformed_lines() {
    let o = tapio(&["events", &fixture("evidence.jsonl")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("TIME"), "{text}");
    let rows = rows(&o);
    assert_eq!(rows.len(), 5, "{text}");
    assert!(rows[0].starts_with("2024-11-21T06:26:24.941Z  warning "), "{}", rows[0]);
    assert!(rows[0].contains("network.connection_refused"));
    assert!(rows[0].contains("curl[11100] TCP connect to 127.0.0.1:1 was refused"), "{}", rows[0]);
    assert!(rows[1].contains("critical") && rows[1].contains("java[4242]"));
    // The controller's record form (RFC 3339 timestamp only) reads the same way.
    assert!(rows[2].starts_with("2024-11-21T06:30:00.500Z  error"), "{}", rows[2]);
    assert!(rows[3].contains("iperf[99] retransmits_in_window=12 window_ms=1000"), "{}", rows[3]);
    assert!(rows[4].contains("page-th…"), "unknown severities are shown: {}", rows[4]);
    assert!(!text.contains('\x1b'), "no colour into a pipe");
    let summary = stderr(&o);
    assert_eq!(
        summary.trim_end(),
        format!(
            "tapio events: 5 shown, 0 filtered out, 5 malformed lines skipped (first at {}:2)",
            fixture("evidence.jsonl")
        )
    );
}

#[test]
fn events_filters_by_type_severity_node_and_time() {
    let f = fixture("evidence.jsonl");
    let count = |args: &[&str]| {
        let mut all = vec!["events"];
        all.extend_from_slice(args);
        all.push(&f);
        let o = tapio(&all);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        rows(&o).len()
    };
    assert_eq!(count(&["--type", "network"]), 2);
    assert_eq!(count(&["--type", "kernel.network.retransmit_spike"]), 1);
    assert_eq!(count(&["--type", "container", "--type", "node"]), 3);
    assert_eq!(count(&["--type", "netw"]), 0, "a prefix must end at a dot");
    assert_eq!(count(&["--severity", "error"]), 2, "error and critical; the unknown severity is not ranked");
    assert_eq!(count(&["--severity", "debug"]), 4);
    assert_eq!(count(&["--node", "node-a"]), 2);
    assert_eq!(count(&["--since", "2024-11-21T06:30:00Z"]), 3);
    assert_eq!(count(&["--since", "2024-11-21T08:30:00+02:00"]), 3, "offsets are honoured");
    assert_eq!(count(&["--since", "10m"]), 0, "the fixture is from the past");
    assert_eq!(count(&["--type", "network", "--node", "node-c", "--severity", "warning"]), 1);
    let o = tapio(&["events", "--type", "network", &f]);
    assert!(stderr(&o).contains("2 shown, 3 filtered out, 5 malformed"), "{}", stderr(&o));
}

#[test]
fn events_json_passes_matching_lines_through_unchanged() {
    let f = fixture("evidence.jsonl");
    let o = tapio(&["events", "--json", "--type", "container", &f]);
    let original: Vec<String> = std::fs::read_to_string(&f).unwrap().lines().map(String::from).collect();
    let got: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(got, vec![original[2].clone(), original[5].clone()]);
}

#[test]
fn events_reads_stdin_and_relative_times() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let line = |ago_s: u64, port: u16| {
        format!(
            r#"{{"type":"kernel.network.connection_refused","observer":"network","severity":"warning","timestamp_unix_nanos":{},"node":"n","facts":{{"dst_port":{port}}}}}"#,
            now - ago_s * 1_000_000_000
        )
    };
    let input = format!("{}\n{}\ngarbage\n{}", line(3_600, 1), line(60, 2), line(5, 3)); // no final newline
    let mut child = Command::new(BIN)
        .args(["events", "--since", "10m", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let r = rows(&o);
    assert_eq!(r.len(), 2, "{}", stdout(&o));
    assert!(r[0].contains("dst_port=2") && r[1].contains("dst_port=3"), "{r:?}");
    assert!(
        stderr(&o).contains("2 shown, 1 filtered out, 1 malformed line skipped (first at stdin:3)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn events_follow_on_a_pipe_ends_with_the_pipe() {
    // A pipe's end is final: --follow on standard input prints the last (unterminated)
    // line and the summary, and exits, instead of polling a closed pipe forever.
    let mut child = Command::new(BIN)
        .args(["events", "-f", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!("{}\n{}", record(1), record(2));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "tapio events -f did not end with its input");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(stdout(&o), format!("{}\n{}\n", record(1), record(2)));
    assert!(stderr(&o).contains("2 shown, 0 filtered out"), "{}", stderr(&o));
}

/// `events.jsonl*` names the rotated files too: following them as files of their own
/// would read each record again at every rotation, so --follow refuses them.
#[test]
fn events_follow_refuses_rotated_names_of_another_file_argument() {
    let dir = temp_dir("follow-glob");
    let log = dir.join("e.jsonl");
    let rotated = dir.join("e.jsonl.1");
    std::fs::write(&log, format!("{}\n", record(1))).unwrap();
    std::fs::write(&rotated, format!("{}\n", record(0))).unwrap();
    let mut child = Command::new(BIN)
        .args(["events", "-f"])
        .args([&log, &rotated])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("tapio events -f e.jsonl e.jsonl.1 followed both");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let want = format!("{} is a rotated file of {}", rotated.display(), log.display());
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    // Read once, both are read.
    let o = tapio(&["events", "--json", log.to_str().unwrap(), rotated.to_str().unwrap()]);
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

fn record(i: u64) -> String {
    format!(
        r#"{{"id":"{i:026}","type":"kernel.network.connection_refused","observer":"network","severity":"warning","timestamp_unix_nanos":{},"node":"node-{}","facts":{{"pid":{i},"comm":"c","dst_port":{}}},"error":{{"code":"ECONNREFUSED","message":"refused, padded to a realistic record size: {}"}}}}"#,
        1_795_242_384_000_000_000 + i,
        i % 7,
        i % 65_536,
        "x".repeat(120)
    )
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits until `path` (the child's stdout file) holds `n` lines.
fn wait_lines(path: &Path, n: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let have = std::fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0);
        if have >= n || Instant::now() > deadline {
            return have;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn events_follow_streams_with_bounded_memory_follows_rotation_and_reports_on_ctrl_c() {
    let dir = temp_dir("follow");
    let log = dir.join("evidence.jsonl");
    // 40 MB of evidence plus a 3 MiB line with no newline in it: far more than the reader
    // may hold.
    let n: u64 = 100_000;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
        for i in 0..n / 2 {
            writeln!(f, "{}", record(i)).unwrap();
        }
        f.write_all(&vec![b'{'; 3 << 20]).unwrap();
        f.write_all(b"\n").unwrap();
        for i in n / 2..n {
            writeln!(f, "{}", record(i)).unwrap();
        }
    }
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size > 40 << 20, "{size}");
    let out_path = dir.join("out.txt");
    let mut child = Command::new(BIN)
        .args(["events", "--follow", "--json"])
        .arg(&log)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(wait_lines(&out_path, n as usize, Duration::from_secs(120)), n as usize, "every record passed through");
    let hwm = vm_hwm_kib(child.id());
    assert!(hwm < 16 * 1024, "peak RSS {hwm} KiB reading a {} MiB file", size >> 20);

    // Appended lines are picked up.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(f, "{}", record(n)).unwrap();
    f.write_all(record(n + 1).as_bytes()).unwrap(); // half-written: no newline yet
    assert_eq!(wait_lines(&out_path, n as usize + 1, Duration::from_secs(10)), n as usize + 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        wait_lines(&out_path, n as usize + 2, Duration::from_millis(10)),
        n as usize + 1,
        "a partial line waits"
    );
    f.write_all(b"\nnot json\n").unwrap();
    drop(f);
    assert_eq!(wait_lines(&out_path, n as usize + 2, Duration::from_secs(10)), n as usize + 2);
    // Rotation: the file is renamed and a new one takes its path.
    std::fs::rename(&log, dir.join("evidence.jsonl.1")).unwrap();
    std::fs::write(&log, format!("{}\n", record(n + 2))).unwrap();
    assert_eq!(wait_lines(&out_path, n as usize + 3, Duration::from_secs(10)), n as usize + 3, "rotated file followed");

    // Ctrl-C: a clean stop with the summary.
    // SAFETY: signalling our own child.
    unsafe { libc_kill(child.id() as i32, 2) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(
        err.contains(&format!("tapio events: {} shown, 0 filtered out, 2 malformed lines skipped", n + 3)),
        "{err}"
    );
    assert!(err.contains(&format!("{}:{}", log.display(), n / 2 + 1)) && err.contains("1 over 1048576 bytes"), "{err}");
    let got = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(got.lines().nth(7), Some(record(7).as_str()), "lines pass through byte for byte");
    let _ = std::fs::remove_dir_all(&dir);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

// ---- status ----

fn post(addr: std::net::SocketAddr, path: &str, body: &Value) -> u16 {
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn heartbeat(agent: &str, hash: &str, events: u64, lost: u64) -> Value {
    serde_json::json!({"wire_version":"tapio-wire/v1","agent_id":agent,"node_name":format!("node-{agent}"),
        "config_version":"1","config_hash":hash,"uptime_seconds":5,"observers":{"network":"running","node":"degraded"},
        "counters":{"events_total":events,"malformed_events_total":0,"lost_events_total":lost,"correlation_drops_total":0,
        "sink_drops_total":0,"controller_send_failures_total":0}})
}

/// A controller on a free loopback port writing its records to a file in `dir`.
fn loopback_controller_settings(dir: &std::path::Path) -> tapio_controller::Settings {
    tapio_controller::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        sinks: vec![tapio_controller::SinkTarget::File(tapio_controller::settings::FileSinkConfig {
            path: dir.join("sink.jsonl"),
            max_bytes: 1 << 20,
            keep_files: 1,
            fsync: tapio_controller::settings::FsyncPolicy::Always,
        })],
        ..tapio_controller::Settings::default()
    }
}

#[test]
fn status_shows_agents_config_state_and_loss_counters() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = temp_dir("status");
    let settings =
        tapio_controller::Settings { controller_id: Some("ctl-test".into()), ..loopback_controller_settings(&dir) };
    let server = rt.block_on(tapio_controller::RunningServer::start(settings)).unwrap();
    let addr = server.addr;
    let target = server.state.config().hash.clone();
    let generation = server.state.config().generation;
    for agent in ["a-current", "b-behind", "c-silent"] {
        let hello = serde_json::json!({"wire_version":"tapio-wire/v1","agent_id":agent,"node_name":format!("node-{agent}"),
            "tapio_version":"0.1.0","kernel_release":"6.18","arch":"x86_64"});
        assert_eq!(post(addr, "/v1/agents/hello", &hello), 200);
    }
    assert_eq!(post(addr, "/v1/agents/heartbeat", &heartbeat("a-current", &target, 12, 3)), 200);
    assert_eq!(post(addr, "/v1/agents/heartbeat", &heartbeat("b-behind", "sha256:0123456789abcdef", 7, 0)), 200);

    let url = format!("http://{addr}");
    let o = tapio(&["status", "--controller", &url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains(&format!("controller ctl-test  target config generation {generation} sha256:")), "{text}");
    assert!(text.contains("3 agents: 1 current, 1 outdated, 1 unreported"), "{text}");
    let line = |id: &str| {
        text.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id} missing: {text}")).to_string()
    };
    let a: Vec<String> = line("a-current").split_whitespace().map(String::from).collect();
    // The heartbeat's age is whole seconds: a loaded machine may take one to run the CLI.
    assert!(["0s", "1s", "2s"].contains(&a[2].as_str()), "heartbeat age {}", a[2]);
    assert_eq!(
        [&a[1..2], &a[3..]].concat(),
        ["node-a-current", "1", &target[..19], "current", "12", "3", "0", "0", "0", "0", "0", "node:degraded"]
    );
    assert!(line("b-behind").contains("1 sha256:0123456789ab OUTDATED  7"), "{}", line("b-behind"));
    assert!(line("c-silent").contains("never      unreported"), "{}", line("c-silent"));

    let v = json_out(&tapio(&["status", "--json", "--controller", &url]));
    let parsed: tapio_wire::StatusResponse = serde_json::from_value(v).unwrap();
    assert_eq!(parsed.agents.len(), 3);
    assert_eq!(parsed.agents[0].config_current, Some(true));

    let o = tapio(&["status", "--controller", &format!("https://{addr}")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("https:// is not supported"), "{}", stderr(&o));
    rt.block_on(server.stop()).unwrap();
    let o = tapio(&["status", "--controller", &url, "--timeout-secs", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_pages_through_a_large_fleet_and_filters_by_state() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = temp_dir("status-pages-i13");
    let settings = loopback_controller_settings(&dir);
    let server = rt.block_on(tapio_controller::RunningServer::start(settings)).unwrap();
    let addr = server.addr;
    let target = server.state.config().hash.clone();
    for i in 0..12 {
        let agent = format!("agent {i:02}/x"); // needs encoding in `after`
        let hello = serde_json::json!({"wire_version":"tapio-wire/v1","agent_id":agent,"node_name":"n",
            "tapio_version":"0.1.0","kernel_release":"6.18","arch":"x86_64"});
        assert_eq!(post(addr, "/v1/agents/hello", &hello), 200);
    }
    assert_eq!(post(addr, "/v1/agents/heartbeat", &heartbeat("agent 03/x", &target, 1, 0)), 200);
    let url = format!("http://{addr}");
    let v = json_out(&tapio(&["status", "--json", "--page-size", "5", "--controller", &url]));
    let ids: Vec<&str> = v["agents"].as_array().unwrap().iter().map(|a| a["agent_id"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..12).map(|i| format!("agent {i:02}/x")).collect();
    assert_eq!(ids, want, "three pages of 5, 5 and 2, merged in order");
    assert!(v.get("next_after").is_none());
    let o = tapio(&["status", "--page-size", "5", "--controller", &url]);
    let text = stdout(&o);
    assert!(text.contains("12 agents: 1 current, 0 outdated, 11 unreported"), "{text}");
    assert!(text.contains("fleet: 12 agents (12 registered, 0 unregistered), 0 stale, 1 degraded"), "{text}");
    let v = json_out(&tapio(&["status", "--json", "--state", "current", "--controller", &url]));
    assert_eq!(v["agents"].as_array().unwrap().len(), 1);
    assert_eq!(v["agents"][0]["agent_id"], "agent 03/x");
    assert_eq!(tapio(&["status", "--page-size", "0", "--controller", &url]).status.code(), Some(2));
    rt.block_on(server.stop()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_refuses_redirects_and_names_error_envelopes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let envelope = r#"{"error":{"code":"UNKNOWN_ENDPOINT","message":"no such x"}}"#;
        for answer in [
            "HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n".to_string(),
            format!("HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{envelope}", envelope.len()),
        ] {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            s.write_all(answer.as_bytes()).unwrap();
        }
    });
    let url = format!("http://{addr}");
    let o = tapio(&["status", "--controller", &url]);
    assert!(
        stderr(&o).contains("answered 302 (redirect to http://elsewhere/); redirects are not followed"),
        "{}",
        stderr(&o)
    );
    let o = tapio(&["status", "--controller", &url]);
    assert!(stderr(&o).contains("answered HTTP 404 UNKNOWN_ENDPOINT no such x"), "{}", stderr(&o));
    server.join().unwrap();
}

// ---- doctor ----

/// What this machine is, read independently of `tapio doctor`'s own code paths.
fn has_hardware_pmu() -> bool {
    std::fs::read_dir("/sys/bus/event_source/devices").into_iter().flatten().flatten().any(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n == "cpu" || n.starts_with("cpu_") || n.starts_with("armv8_pmu") || n.starts_with("armv7_")
    })
}

fn cgroup_layout() -> &'static str {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let v2 = mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("cgroup2"));
    let v1 = mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("cgroup"));
    match (v2, v1) {
        (true, false) => "unified",
        (true, true) => "hybrid",
        _ => "legacy",
    }
}

#[test]
fn doctor_reports_the_facts_of_this_machine() {
    let o = tapio(&["doctor"]);
    let text = stdout(&o);
    let check = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name}: {text}"))
            .to_string()
    };
    // This project's VMs: BTF present, no hardware PMU, hybrid cgroups (v1 memory).
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    assert_eq!(check("btf").split_whitespace().nth(1), Some(if btf { "ok" } else { "FAIL" }), "{text}");
    let pmu = check("pmu");
    if has_hardware_pmu() {
        assert!(pmu.contains(" ok "), "{pmu}");
    } else {
        assert!(pmu.contains("warn") && pmu.contains("no hardware PMU"), "{pmu}");
        assert!(
            text.lines().any(|l| l.starts_with("node: cpu_stall / ipc_degradation (pmc)") && l.contains(" no ")),
            "{text}"
        );
    }
    let cg = check("cgroups");
    assert!(cg.contains(cgroup_layout()), "{cg}");
    if cgroup_layout() == "hybrid" {
        assert!(cg.contains("memory controller: v1 at"), "{cg}");
    }
    let psi = Path::new("/proc/pressure/memory").exists();
    assert_eq!(check("psi").split_whitespace().nth(1), Some(if psi { "ok" } else { "warn" }));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(check("kernel").contains(kernel.trim()));
    // Root in these tests' environment (kernel tests need it too): the agent can run.
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc_geteuid() } == 0;
    if root && btf {
        assert_eq!(o.status.code(), Some(0), "{text}");
        assert!(text.contains("verdict: the agent can run here"), "{text}");
    }
    // As root on a cgroup2 node every eBPF evidence family but the PMU's works, DNS included;
    // OOM kills whatever the kernel's mark_victim passes (typed or pid hook). Without tracefs
    // the tracepoints cannot be looked up: OOM kills and storage are unknown, never "yes".
    let cgroup2 = cgroup_layout() != "legacy";
    let tracefs = std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(" - tracefs ");
    let row = |evidence: &str| {
        text.lines().find(|l| l.starts_with(&format!("{evidence} "))).unwrap_or_else(|| panic!("{text}")).to_string()
    };
    if root && btf && cgroup2 {
        for evidence in ["network", "container: oom_kill", "storage", "dns", "container_pressure"] {
            let traced = evidence.contains("oom") || evidence == "storage";
            let row = row(evidence);
            assert!(row.contains(if traced && !tracefs { " unknown " } else { " yes" }), "{row}");
        }
        assert!(check("capabilities").contains("CAP_NET_ADMIN"), "{text}");
    }
    if !tracefs {
        assert!(!row("container: oom_kill").contains(" yes"), "{text}");
    }
    // Root's limits here; this kernel decides whether RLIMIT_MEMLOCK matters.
    let memlock = check("memlock");
    let mut version = kernel.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    let old = (version.next(), version.next()) < (Some(5), Some(11));
    assert_eq!(!memlock.contains("not used"), old, "{memlock}");
    let v = json_out(&tapio(&["doctor", "--json"]));
    assert_eq!(v["agent_can_run"], o.status.code() == Some(0));
    let pmc = v["observers"].as_array().unwrap().iter().find(|x| x["name"].as_str().unwrap().contains("pmc")).unwrap();
    assert_eq!(pmc["works"], has_hardware_pmu());
    assert_eq!(v["checks"].as_array().unwrap().len(), 9);
    let oom = v["observers"].as_array().unwrap().iter().find(|x| x["name"] == "container: oom_kill").unwrap();
    assert!(tracefs || oom["works"] != true, "{oom}");
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

// ---- events: Kubernetes workload (records the controller named with `k8s`) ----

#[test]
fn events_show_the_workload_and_filter_by_namespace_pod_and_container() {
    let f = fixture("evidence-k8s.jsonl");
    let table = |args: &[&str]| {
        let mut all = vec!["events"];
        all.extend_from_slice(args);
        all.push(&f);
        let o = tapio(&all);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        rows(&o)
    };
    let all = table(&[]);
    assert_eq!(all.len(), 5);
    assert!(all[0].contains("shop/web-6d4b9c7f5d-x2x7q/app"), "{}", all[0]);
    assert!(all[1].contains("shop/db-0/postgres"), "{}", all[1]);
    // Not named by the controller: what the node knows, shortest first.
    assert!(all[2].contains("container ff1c0a1b2c3d"), "{}", all[2]);
    assert!(all[3].contains("/user.slice"), "{}", all[3]);
    assert!(all[4].contains("  -  "), "{}", all[4]);

    assert_eq!(table(&["--namespace", "shop"]).len(), 2);
    assert_eq!(table(&["-n", "kube-system"]).len(), 0);
    let db = table(&["--pod", "db-0"]);
    assert_eq!(db.len(), 1);
    assert!(db[0].contains("psql[77]"), "{}", db[0]);
    assert_eq!(table(&["--pod", "0f0f0f0f-0000-4000-8000-000000000000"]).len(), 1, "by pod UID too");
    assert_eq!(table(&["--container", "app", "--container", "postgres"]).len(), 2);
    assert_eq!(table(&["-n", "shop", "-c", "app"]).len(), 1);
    assert_eq!(table(&["-n", "shop", "--type", "network"]).len(), 1);
    let o = tapio(&["events", "--json", "--pod", "web-6d4b9c7f5d-x2x7q", &f]);
    let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(line["k8s"]["k8s.deployment.name"], "web", "--json passes the record through unchanged");
    assert!(stderr(&o).contains("1 shown, 4 filtered out"), "{}", stderr(&o));
}

// ---- what records and controllers send is shown, never obeyed by the terminal ----

/// A controller on a loopback port that answers every request with `answer(path)`: (HTTP
/// status, body), one connection a request.
fn fake_controller(answer: impl Fn(&str) -> (u16, String) + Send + 'static) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let (mut request, mut buf) = (Vec::new(), [0u8; 4096]);
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&request);
            let (code, body) = answer(head.split_whitespace().nth(1).unwrap_or(""));
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// The value of `key` in a request path's query (not percent-decoded).
fn query<'a>(path: &'a str, key: &str) -> &'a str {
    let q = path.split_once('?').map_or("", |(_, q)| q);
    q.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')).unwrap_or("")
}

fn status_page(agents: Value, next_after: Option<String>, total: u64) -> String {
    let mut v = serde_json::json!({"wire_version": "tapio-wire/v1", "controller_id": "c", "config":
        {"version": "1", "config_hash": "sha256:ab"}, "totals": {}, "agents": agents, "summary": {"agents_total": total}});
    if let Some(next) = next_after {
        v["next_after"] = next.into();
    }
    v.to_string()
}

fn no_terminal_control(o: &Output) {
    for (name, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        assert!(!bytes.iter().any(|b| [0x1b, 0x07].contains(b)), "{name}: {:?}", String::from_utf8_lossy(bytes));
        assert!(!String::from_utf8_lossy(bytes).contains('\u{9b}'), "{name} carries a C1 CSI");
    }
}

/// comm can be set by any process (prctl PR_SET_NAME), node names and a controller's
/// messages come from elsewhere: tables and messages show their control characters as
/// `\u{1b}` text; `--json` passes the lines through byte for byte.
#[test]
fn control_characters_from_records_and_controllers_are_shown_escaped() {
    let dir = temp_dir("escape");
    let log = dir.join("e.jsonl");
    let record = serde_json::json!({"type": "kernel.process.oom_kill", "severity": "error",
        "timestamp": "2026-11-21T06:00:00Z", "node": "n\x1b]0;x\x07",
        "k8s": {"k8s.namespace.name": "ns\x1b[8m", "k8s.pod.name": "p"},
        "facts": {"comm": "evil\x1b[2J\u{9b}31m", "pid": 5}, "error": {"message": "gone\x07\x1b[H"}});
    std::fs::write(&log, format!("{record}\n")).unwrap();
    let o = tapio(&["events", log.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    no_terminal_control(&o);
    let text = stdout(&o);
    for shown in [r"n\u{1b}]0;x\u{7}", r"ns\u{1b}[8m/p", r"evil\u{1b}[2J\u{9b}31m[5] gone\u{7}\u{1b}[H"] {
        assert!(text.contains(shown), "{shown} in {text}");
    }
    let o = tapio(&["events", "--json", log.to_str().unwrap()]);
    assert_eq!(o.stdout, std::fs::read(&log).unwrap(), "--json is the line unchanged");

    let agent = serde_json::json!({"agent_id": "a\u{9b}2J", "node_name": "n\x1b]0;x\x07", "last_heartbeat_age_seconds": 1,
        "reported_config_version": "1\x1b[1m", "reported_config_hash": "sha256:ab\x1b[0m", "config_current": true,
        "observers": {"dns\x1b[5m": "failed"}});
    let url = fake_controller(move |_| (200, status_page(Value::Array(vec![agent.clone()]), None, 1)));
    let o = tapio(&["status", "--controller", &url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    no_terminal_control(&o);
    let text = stdout(&o);
    for shown in [r"a\u{9b}2J", r"n\u{1b}]0;x\u{7}", r"1\u{1b}[1m sha256:ab\u{1b}[0m current", r"dns\u{1b}[5m:failed"] {
        assert!(text.contains(shown), "{shown} in {text}");
    }
    let url = fake_controller(|_| {
        (503, serde_json::json!({"error": {"code": "INTERNAL\x07", "message": "\x1b[2Jboom"}}).to_string())
    });
    let o = tapio(&["status", "--controller", &url]);
    assert_eq!(o.status.code(), Some(2));
    no_terminal_control(&o);
    assert!(stderr(&o).contains(r"answered HTTP 503 INTERNAL\u{7} \u{1b}[2Jboom"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A controller whose paging does not end (a `next_after` that does not move forward, or
/// pages past the CLI's cap) gives part of the fleet: that is an error, also with --json.
#[test]
fn status_refuses_a_paging_that_does_not_end() {
    let agent = |id: &str| serde_json::json!({"agent_id": id, "node_name": "n"});
    // Pages of one; the third one's next_after is the second's again.
    let url = fake_controller(move |path| {
        let after = query(path, "after").to_string();
        let (page, next) = match after.as_str() {
            "" => (0, "agent-0"),
            "agent-0" => (1, "agent-1"),
            _ => (2, "agent-1"),
        };
        (200, status_page(serde_json::json!([agent(&format!("agent-{page}"))]), Some(next.into()), 7))
    });
    for json in [false, true] {
        let mut args = vec!["status", "--page-size", "1", "--controller", &url];
        if json {
            args.push("--json");
        }
        let o = tapio(&args);
        assert_eq!((o.status.code(), stdout(&o)), (Some(2), String::new()), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("paging did not end (after \"agent-1\"") && e.contains("3 of 7 agents read"), "{e}");
    }
    // A next_after that always moves forward: the walk stops at its cap.
    let url = fake_controller(|path| {
        let n: u64 = query(path, "after").parse().unwrap_or(0);
        (
            200,
            status_page(serde_json::json!([{"agent_id": format!("{n:07}")}]), Some(format!("{:07}", n + 1)), 9_999_999),
        )
    });
    let o = tapio(&["status", "--json", "--controller", &url]);
    assert_eq!((o.status.code(), stdout(&o)), (Some(2), String::new()), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("(after \"0001000\", 1000 pages at most): 1000 of 9999999 agents read"), "{e}");
}

/// A line over the limit is skipped, but its bytes were read: a truncation after it is
/// seen, and what is written to the file afterwards is read from its start.
#[test]
fn events_follow_sees_a_truncation_after_an_over_long_line() {
    let dir = temp_dir("follow-truncate");
    let log = dir.join("e.jsonl");
    {
        let mut f = std::fs::File::create(&log).unwrap();
        f.write_all(&vec![b'x'; 2 << 20]).unwrap();
        writeln!(f, "\n{}", record(1)).unwrap();
    }
    let out_path = dir.join("out.txt");
    let mut child = Command::new(BIN)
        .args(["events", "-f", "--json"])
        .arg(&log)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(wait_lines(&out_path, 1, Duration::from_secs(10)), 1);
    // Truncated and written at once (no poll sees it empty): a record a little longer than
    // the last line (counting the lines alone would see no truncation), far shorter than
    // the file was.
    std::fs::write(&log, format!("{}\n", record(123_456))).unwrap();
    let shown = wait_lines(&out_path, 2, Duration::from_secs(10));
    // SAFETY: signalling our own child.
    unsafe { libc_kill(child.id() as i32, 2) };
    assert!(child.wait().unwrap().success());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(shown, 2, "the record after the truncation: {err}");
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), format!("{}\n{}\n", record(1), record(123_456)));
    assert!(
        err.contains("2 shown, 0 filtered out, 1 malformed line skipped") && err.contains("1 over 1048576"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A day past its month's end, or an offset past 23:59, is no time: a record carrying one
/// is malformed, a --since naming one an error.
#[test]
fn events_refuse_impossible_dates() {
    let dir = temp_dir("dates");
    let log = dir.join("e.jsonl");
    let line = |t: &str| format!(r#"{{"type":"kernel.process.oom_kill","severity":"error","timestamp":"{t}"}}"#);
    let lines = [line("2026-02-28T00:00:00Z"), line("2026-02-30T00:00:00Z"), line("2026-03-01T00:00:00+99:99")];
    std::fs::write(&log, lines.join("\n")).unwrap();
    let o = tapio(&["events", log.to_str().unwrap()]);
    assert_eq!(rows(&o).len(), 1, "{}", stdout(&o));
    assert!(stderr(&o).contains("1 shown, 0 filtered out, 2 malformed lines skipped"), "{}", stderr(&o));
    for since in ["2026-02-30T00:00:00Z", "2025-02-29T00:00:00Z", "2026-03-01T00:00:00+24:00"] {
        let o = tapio(&["events", "--since", since, log.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{since}");
        assert!(stderr(&o).contains("is neither RFC 3339"), "{}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
