//! `tapio events`: evidence JSON lines (the agent's stdout/file, the controller's sink) as a
//! readable table, filtered by type, minimum severity, time, node and Kubernetes workload
//! (namespace, pod, container: the controller's `k8s` names), with the workload shown.
//!
//! Streaming with constant memory whatever the file size: lines are read into one bounded
//! buffer (a line over [`MAX_LINE`] is skipped and counted, without being held). A line that
//! is not an evidence record is counted as malformed and reported at the end; it never stops
//! the read. `--follow` keeps polling the files as they grow, reopening one that is rotated
//! or truncated, until Ctrl-C (the summary is still printed). A rotation is followed as the
//! agent's and controller's file sinks rotate (`path` → `path.1` → …, `tapio_util::rotate`):
//! the rest of the old file, then any files rotated through since the last poll, oldest
//! first, then the new `path`. Files are told apart by device and inode, not by name, so a
//! rotation while they are read skips none; a file rotated away before it could be read is
//! counted and reported. A rotated name of another file argument (`path.1` beside `path`)
//! is refused with `--follow`: following `path` already reads it.

use std::fs::File;
use std::io::{ErrorKind, IsTerminal, Read};
use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value as Json;

use crate::{out, table, time};

/// Longest line accepted (an evidence record is well under 4 KiB).
pub const MAX_LINE: usize = 1 << 20;
const READ_CHUNK: usize = 64 * 1024;
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// What `tapio events` was asked for.
pub struct Options {
    pub files: Vec<String>,
    pub follow: bool,
    pub types: Vec<String>,
    pub severity: Option<String>,
    pub since: Option<String>,
    pub nodes: Vec<String>,
    pub namespaces: Vec<String>,
    pub pods: Vec<String>,
    pub containers: Vec<String>,
    pub json: bool,
}

const SEVERITIES: [&str; 5] = ["debug", "info", "warning", "error", "critical"];

fn severity_rank(s: &str) -> Option<usize> {
    SEVERITIES.iter().position(|x| *x == s)
}

/// The fields of a record this command reads (from the parsed line; the rest is ignored).
struct Record {
    kind: String,
    severity: String,
    observer: String,
    node: Option<String>,
    message: String,
    facts: Json,
    /// `k8s.namespace.name`, `k8s.pod.name`, `k8s.container.name` (controller records of
    /// known pods).
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
    /// What the node knows: pod UID, container id, cgroup path.
    pod_uid: Option<String>,
    container_id: Option<String>,
    cgroup_path: Option<String>,
}

impl Record {
    /// The record and its time, or None when the line is not an evidence record (no
    /// `kernel.` type, or no timestamp).
    fn from_json(mut v: Json) -> Option<(Record, i128)> {
        let string = |v: &Json| v.as_str().map(str::to_string);
        let at = match (v["timestamp_unix_nanos"].as_u64(), v["timestamp"].as_str()) {
            (Some(ns), _) => i128::from(ns),
            (None, Some(t)) => time::parse_rfc3339(t)?,
            (None, None) => return None,
        };
        let kind = string(&v["type"]).filter(|k| k.starts_with("kernel."))?;
        let r = Record {
            kind,
            severity: string(&v["severity"]).unwrap_or_default(),
            observer: string(&v["observer"]).unwrap_or_default(),
            node: string(&v["node"]),
            message: string(&v["error"]["message"]).unwrap_or_default(),
            facts: v.get_mut("facts").map(Json::take).unwrap_or(Json::Null),
            namespace: string(&v["k8s"]["k8s.namespace.name"]),
            pod: string(&v["k8s"]["k8s.pod.name"]),
            container: string(&v["k8s"]["k8s.container.name"]),
            pod_uid: string(&v["workload"]["pod_uid"]),
            container_id: string(&v["workload"]["container_id"]),
            cgroup_path: string(&v["workload"]["cgroup_path"]),
        };
        Some((r, at))
    }
}

#[derive(Default)]
struct Filter {
    types: Vec<String>,
    min_severity: Option<usize>,
    since_ns: Option<i128>,
    nodes: Vec<String>,
    namespaces: Vec<String>,
    /// Pod names, or pod UIDs (which records carry even when the controller could not
    /// name the pod).
    pods: Vec<String>,
    containers: Vec<String>,
}

/// An empty filter list allows everything; otherwise the value must be one of them.
fn one_of(wanted: &[String], value: Option<&String>) -> bool {
    wanted.is_empty() || value.is_some_and(|v| wanted.contains(v))
}

impl Filter {
    fn type_matches(&self, kind: &str) -> bool {
        self.types.is_empty()
            || self.types.iter().any(|t| {
                let full = if t.starts_with("kernel.") { t.clone() } else { format!("kernel.{t}") };
                kind == full || kind.strip_prefix(full.as_str()).is_some_and(|rest| rest.starts_with('.'))
            })
    }

    fn matches(&self, r: &Record, at_ns: i128) -> bool {
        self.type_matches(&r.kind)
            // An unknown severity cannot be ranked: it passes only when no minimum is set.
            && self.min_severity.is_none_or(|min| severity_rank(&r.severity).is_some_and(|s| s >= min))
            && self.since_ns.is_none_or(|since| at_ns >= since)
            && one_of(&self.nodes, r.node.as_ref())
            && one_of(&self.namespaces, r.namespace.as_ref())
            && (one_of(&self.pods, r.pod.as_ref()) || one_of(&self.pods, r.pod_uid.as_ref()))
            && one_of(&self.containers, r.container.as_ref())
    }
}

/// Counts reported at the end.
#[derive(Default)]
struct Tally {
    shown: u64,
    filtered: u64,
    malformed: u64,
    oversized: u64,
    first_bad: Option<String>,
    /// While following: times files were rotated away before they could be read.
    gone: u64,
}

struct Printer {
    json: bool,
    color: bool,
    header_done: bool,
}

impl Printer {
    fn row(&mut self, line: &[u8], r: &Record, at_ns: i128) {
        if self.json {
            let mut l = line.to_vec();
            l.push(b'\n');
            out(&String::from_utf8_lossy(&l));
            return;
        }
        let mut text = String::new();
        if !self.header_done {
            self.header_done = true;
            // The row's columns, padded as below: a literal, not formatted (size budget).
            text.push_str(
                "TIME                      SEVERITY  TYPE                                \
                 NODE              WORKLOAD                                  DETAIL\n",
            );
        }
        let kind = r.kind.strip_prefix("kernel.").unwrap_or(&r.kind);
        let sev = format!("{:<8}", table::truncate(&r.severity, 8));
        let sev = match (self.color, r.severity.as_str()) {
            (true, "critical") => format!("\x1b[1;31m{sev}\x1b[0m"),
            (true, "error") => format!("\x1b[31m{sev}\x1b[0m"),
            (true, "warning") => format!("\x1b[33m{sev}\x1b[0m"),
            (true, "debug") => format!("\x1b[2m{sev}\x1b[0m"),
            _ => sev,
        };
        let row = format!(
            "{:<24}  {sev}  {:<34}  {:<16}  {:<40}  {}",
            time::format_ms(at_ns),
            table::truncate(kind, 34),
            table::truncate(r.node.as_deref().unwrap_or("-"), 16),
            table::truncate(&workload(r), 40),
            detail(r)
        );
        text.push_str(row.trim_end());
        text.push('\n');
        out(&text);
    }
}

/// Who it happened to: `namespace/pod/container` when the controller named the pod, else
/// what the node knows (short container id, pod UID, cgroup path), else `-`.
fn workload(r: &Record) -> String {
    if let (Some(ns), Some(pod)) = (&r.namespace, &r.pod) {
        return match &r.container {
            Some(c) => format!("{ns}/{pod}/{c}"),
            None => format!("{ns}/{pod}"),
        };
    }
    match (&r.container_id, &r.pod_uid, &r.cgroup_path) {
        (Some(cid), _, _) => format!("container {}", cid.get(..12).unwrap_or(cid)),
        (None, Some(uid), _) => format!("pod {uid}"),
        (None, None, Some(path)) => path.clone(),
        (None, None, None) => "-".into(),
    }
}

/// One line of what happened: the task, then the record's own factual message, or its
/// scalar facts when it has none.
fn detail(r: &Record) -> String {
    let facts = r.facts.as_object();
    let get = |k: &str| facts.and_then(|f| f.get(k));
    let mut parts = Vec::new();
    match (get("comm").and_then(Json::as_str), get("pid").and_then(Json::as_u64)) {
        (Some(comm), Some(pid)) => parts.push(format!("{comm}[{pid}]")),
        (Some(comm), None) => parts.push(comm.to_string()),
        (None, Some(pid)) => parts.push(format!("pid {pid}")),
        (None, None) => {}
    }
    match r.message.as_str() {
        "" => {
            let scalars: Vec<String> = facts
                .into_iter()
                .flatten()
                .filter(|(k, v)| !matches!(k.as_str(), "comm" | "pid") && !v.is_object() && !v.is_array())
                .take(8)
                .map(|(k, v)| match v {
                    Json::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            if !scalars.is_empty() {
                parts.push(scalars.join(" "));
            } else if !r.observer.is_empty() && parts.is_empty() {
                parts.push(format!("observer {}", r.observer));
            }
        }
        message => parts.push(message.to_string()),
    }
    table::truncate(&parts.join(" "), 200)
}

/// The result of asking a reader for its next line.
enum Next {
    Line,
    /// A line longer than [`MAX_LINE`] was skipped.
    Oversized,
    /// No more data for now (end of file, or of the stream).
    End,
    /// A signal interrupted a blocking read.
    Interrupted,
}

/// A line reader over any `Read`, with a fixed chunk buffer and a bounded line buffer.
/// At end of data a partial last line is kept, so a file that is still being written is
/// read whole on the next try.
struct Lines<R> {
    inner: R,
    chunk: Vec<u8>,
    start: usize,
    end: usize,
    line: Vec<u8>,
    /// Inside an over-long line: drop bytes until its newline.
    discarding: bool,
    number: u64,
    /// Bytes read from `inner`: every line's, an over-long one's that was dropped, and the
    /// partial last line's. A file now shorter than that was truncated.
    consumed: u64,
}

impl<R: Read> Lines<R> {
    fn new(inner: R) -> Self {
        let chunk = vec![0; READ_CHUNK];
        Self { inner, chunk, start: 0, end: 0, line: Vec::new(), discarding: false, number: 0, consumed: 0 }
    }

    fn next(&mut self) -> std::io::Result<Next> {
        loop {
            if self.start < self.end {
                let window = &self.chunk[self.start..self.end];
                match window.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        let take = &window[..i];
                        self.start += i + 1;
                        self.number += 1;
                        if self.discarding || self.line.len() + take.len() > MAX_LINE {
                            self.discarding = false;
                            self.line.clear();
                            return Ok(Next::Oversized);
                        }
                        self.line.extend_from_slice(take);
                        return Ok(Next::Line);
                    }
                    None => {
                        if !self.discarding {
                            if self.line.len() + window.len() > MAX_LINE {
                                self.discarding = true;
                                self.line = Vec::new(); // give the memory back
                            } else {
                                self.line.extend_from_slice(window);
                            }
                        }
                        self.start = self.end;
                    }
                }
            }
            match self.inner.read(&mut self.chunk) {
                Ok(0) => return Ok(Next::End),
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                    self.consumed += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(Next::Interrupted),
                Err(e) => return Err(e),
            }
        }
    }

    /// At the very end: a last line without its newline counts as a line.
    fn finish(&mut self) -> Option<Next> {
        if self.discarding {
            self.discarding = false;
            self.number += 1;
            return Some(Next::Oversized);
        }
        if self.line.is_empty() {
            return None;
        }
        self.number += 1;
        Some(Next::Line)
    }
}

/// Set by SIGINT/SIGTERM while following: stop reading and print the summary.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Installs the stop handler without SA_RESTART, so a blocked read returns EINTR.
fn install_stop_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which
        // is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

struct Source {
    name: String,
    lines: Lines<Box<dyn Read>>,
    /// For files: device and inode of the open file, to notice rotation while following
    /// (and the bytes read, `lines.consumed`, truncation).
    identity: Option<(u64, u64)>,
}

fn open(name: &str) -> std::io::Result<Source> {
    if name == "-" {
        return Ok(Source {
            name: "stdin".into(),
            lines: Lines::new(Box::new(std::io::stdin().lock())),
            identity: None,
        });
    }
    let file = File::open(name)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(std::io::Error::other("is a directory"));
    }
    Ok(Source { name: name.to_string(), lines: Lines::new(Box::new(file)), identity: Some((meta.dev(), meta.ino())) })
}

struct Run {
    filter: Filter,
    printer: Printer,
    tally: Tally,
}

impl Run {
    fn line(&mut self, src: &str, number: u64, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return; // blank lines are not records, nor malformed ones
        }
        let parsed = serde_json::from_slice::<Json>(line).ok().and_then(Record::from_json);
        match parsed {
            None => self.bad(src, number),
            Some((r, at)) if self.filter.matches(&r, at) => {
                self.tally.shown += 1;
                self.printer.row(line, &r, at);
            }
            Some(_) => self.tally.filtered += 1,
        }
    }

    fn bad(&mut self, src: &str, number: u64) {
        self.tally.malformed += 1;
        if self.tally.first_bad.is_none() {
            self.tally.first_bad = Some(format!("{src}:{number}"));
        }
    }

    fn oversized(&mut self, src: &str, number: u64) {
        self.tally.oversized += 1;
        self.bad(src, number);
    }

    /// Reads what `src` has now. Returns false when interrupted by a stop signal.
    fn drain(&mut self, src: &mut Source, at_end: bool) -> Result<bool, String> {
        loop {
            let next = src.lines.next().map_err(|e| format!("reading {}: {e}", src.name))?;
            match next {
                Next::Line => {
                    let line = std::mem::take(&mut src.lines.line);
                    self.line(&src.name, src.lines.number, &line);
                    src.lines.line = line;
                    src.lines.line.clear();
                }
                Next::Oversized => self.oversized(&src.name, src.lines.number),
                Next::Interrupted if STOP.load(Ordering::Relaxed) => return Ok(false),
                Next::Interrupted => {}
                Next::End => {
                    if at_end {
                        match src.lines.finish() {
                            Some(Next::Oversized) => self.oversized(&src.name, src.lines.number),
                            Some(_) => {
                                let line = std::mem::take(&mut src.lines.line);
                                self.line(&src.name, src.lines.number, &line);
                            }
                            None => {}
                        }
                    }
                    return Ok(true);
                }
            }
        }
    }
}

/// `tapio events`.
pub fn run(opts: Options) -> Result<ExitCode, String> {
    let min_severity = match &opts.severity {
        None => None,
        Some(s) => Some(
            severity_rank(&s.to_ascii_lowercase())
                .ok_or_else(|| format!("--severity {s:?} is not one of {}", SEVERITIES.join(", ")))?,
        ),
    };
    let since_ns = opts.since.as_deref().map(|s| time::parse_since(s, time::now_ns())).transpose()?;
    let mut files = opts.files;
    if files.is_empty() {
        files.push("-".into());
    }
    if opts.follow && files.len() > 1 && files.iter().any(|f| f == "-") {
        return Err("--follow reads either standard input or files, not both".into());
    }
    if opts.follow {
        if let Some((a, b)) = rotated_argument(&files) {
            return Err(format!(
                "--follow: {a} is a rotated file of {b}, which is followed across rotation: name only {b}"
            ));
        }
    }
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut run = Run {
        filter: Filter {
            types: opts.types,
            min_severity,
            since_ns,
            nodes: opts.nodes,
            namespaces: opts.namespaces,
            pods: opts.pods,
            containers: opts.containers,
        },
        printer: Printer { json: opts.json, color, header_done: false },
        tally: Tally::default(),
    };
    if opts.follow {
        install_stop_handler();
    }
    let mut failed_opens = 0;
    let mut sources = Vec::new();
    for name in &files {
        match open(name) {
            Ok(s) => sources.push(s),
            Err(e) => {
                eprintln!("tapio events: cannot read {name}: {e}");
                failed_opens += 1;
            }
        }
    }
    let mut stopped = false;
    for src in &mut sources {
        // A pipe's end of data is final (its read blocks until there is more); only a
        // file's end can be followed.
        let final_end = !opts.follow || src.identity.is_none();
        if !run.drain(src, final_end)? {
            stopped = true;
            break;
        }
    }
    sources.retain(|s| s.identity.is_some());
    if opts.follow && !stopped && !sources.is_empty() {
        follow(&mut run, &mut sources)?;
    }

    let t = &run.tally;
    let mut summary = format!("tapio events: {} shown, {} filtered out", t.shown, t.filtered);
    if t.malformed > 0 {
        summary.push_str(&format!(
            ", {} malformed line{} skipped (first at {}",
            t.malformed,
            if t.malformed == 1 { "" } else { "s" },
            t.first_bad.as_deref().unwrap_or("?")
        ));
        if t.oversized > 0 {
            summary.push_str(&format!("; {} over {MAX_LINE} bytes", t.oversized));
        }
        summary.push(')');
    }
    if t.gone > 0 {
        summary.push_str(&format!(", {} rotated file(s) gone unread", t.gone));
    }
    eprintln!("{summary}");
    Ok(if failed_opens > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// A file argument that is a rotated name (`path.N`, N from 1, as `tapio_util::rotate`
/// names them) of another one, as `events.jsonl*` expands to: (it, the other).
fn rotated_argument(files: &[String]) -> Option<(&String, &String)> {
    files.iter().find_map(|a| {
        let rotated = |b: &&String| {
            let n = a.strip_prefix(b.as_str()).and_then(|r| r.strip_prefix('.')).unwrap_or("");
            matches!(n.as_bytes().first(), Some(b'1'..=b'9')) && n.bytes().all(|c| c.is_ascii_digit())
        };
        Some((a, files.iter().find(rotated)?))
    })
}

/// Polls the files for new lines until a stop signal; reopens a file whose path now names
/// another file (rotation) or that shrank (truncation), after reading what the old one had.
/// Not inlined into `run`: 256 B less of the CLI's size budget.
#[inline(never)]
fn follow(run: &mut Run, sources: &mut [Source]) -> Result<(), String> {
    while !STOP.load(Ordering::Relaxed) {
        for src in sources.iter_mut() {
            if !run.drain(src, false)? {
                return Ok(());
            }
            let Some(identity) = src.identity else { continue };
            let Ok(meta) = std::fs::metadata(&src.name) else { continue };
            if (meta.dev(), meta.ino()) != identity {
                // The writer is done with the old file: read what came after the last
                // poll, then every file it rotated through since (several rotations can
                // fall between two polls), oldest first, then the new file.
                if !run.drain(src, true)? {
                    return Ok(());
                }
                run.tally.gone += catch_up(src, listing, |f| run.drain(f, true))?;
            } else if meta.len() < src.lines.consumed {
                if let Ok(fresh) = open(&src.name) {
                    *src = fresh;
                }
            } else {
                continue;
            }
            if STOP.load(Ordering::Relaxed) || !run.drain(src, false)? {
                return Ok(());
            }
        }
        std::thread::sleep(FOLLOW_POLL);
    }
    Ok(())
}

/// Most rotated files looked at: above both writers' `keep_files` limits.
const MAX_ROTATED: usize = 1_000;

type Id = (u64, u64);

/// `path.k` as `tapio_util::rotate::rotated` names it, `path` itself for 0.
fn rotated(path: &str, k: usize) -> String {
    if k == 0 {
        path.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// The files of `path` oldest first, as `tapio_util::rotate` keeps them (`path.N` …
/// `path.1`, then `path`): each one's number and the device and inode it had when listed.
/// Looked at from `path` up, every number: a rotation meanwhile moves files to higher
/// numbers, so a file may be seen twice (listed once) but is never missed.
fn listing(path: &str) -> Vec<(usize, Id)> {
    let mut files = Vec::new();
    for k in 0..=MAX_ROTATED {
        if let Ok(m) = std::fs::metadata(rotated(path, k)) {
            files.insert(0, (k, (m.dev(), m.ino())));
        }
    }
    files.dedup_by_key(|f| f.1);
    files
}

/// After the followed file `src` (read to its end) rotated: reads each file rotated through
/// since with `read`, oldest first, and makes `src` the new `path`, opened. Each step lists
/// the files and takes the one after the last one read, found by its identity, if it is still
/// the one listed once open. The last one read stays open, so its inode is not reused while
/// the files are listed again. Returns the gaps: files that could not be read, and times
/// the last file read was listed no more (rotated past the files kept: what came between is
/// unknown). While `path` cannot be opened, `src` takes the identity of the last file read,
/// so that the next poll goes on from there.
fn catch_up(
    src: &mut Source,
    mut list: impl FnMut(&str) -> Vec<(usize, Id)>,
    mut read: impl FnMut(&mut Source) -> Result<bool, String>,
) -> Result<u64, String> {
    let Some(mut last) = src.identity else { return Ok(0) };
    let (mut gone, mut _held) = (0, None);
    loop {
        let files = list(&src.name);
        let at = match files.iter().position(|f| f.1 == last) {
            Some(i) => i + 1,
            None => {
                gone += u64::from(!files.is_empty());
                0
            }
        };
        let Some(&(k, id)) = files.get(at) else {
            src.identity = Some(last);
            return Ok(gone);
        };
        let mut file = match open(&rotated(&src.name, k)) {
            Ok(file) if file.identity == Some(id) => file,
            Err(e) if e.kind() != ErrorKind::NotFound => {
                if k == 0 {
                    src.identity = Some(last); // tried again at the next poll
                    return Ok(gone);
                }
                (gone, last) = (gone + 1, id); // unreadable: counted
                continue;
            }
            // Moved since it was listed: listed again.
            _ => continue,
        };
        if k == 0 {
            *src = file;
            return Ok(gone);
        }
        if !read(&mut file)? {
            return Ok(gone);
        }
        (last, _held) = (id, Some(file));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;
    use tapio_util::rotate::{oldest_first, RotatingFile};

    fn temp(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tapio-events-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A file whose every append after the first rotates: one record a file.
    /// A writer keeping `keep` rotated files in a scratch directory, and a follower of its
    /// file opened after the first line, `0`: (directory, file, writer, follower).
    fn followed(tag: &str, keep: usize) -> (std::path::PathBuf, std::path::PathBuf, RotatingFile, Source) {
        let dir = temp(tag);
        let path = dir.join("e.jsonl");
        let mut file = writer(&path, keep);
        file.append(b"0\n").unwrap();
        let src = open(path.to_str().unwrap()).unwrap();
        (dir, path, file, src)
    }

    fn writer(path: &Path, keep: usize) -> RotatingFile {
        RotatingFile::open(path.to_path_buf(), 3, keep).unwrap()
    }

    fn text(src: &mut Source) -> String {
        let mut s = String::new();
        src.lines.inner.read_to_string(&mut s).unwrap();
        s
    }

    /// What a catch-up reads, file by file, and the gaps it counts.
    fn read_all(src: &mut Source, list: impl FnMut(&str) -> Vec<(usize, Id)>) -> (Vec<String>, u64) {
        let mut read = Vec::new();
        let gone = catch_up(src, list, |f| {
            read.push(text(f));
            Ok(true)
        })
        .unwrap();
        (read, gone)
    }

    fn id(path: &Path) -> Id {
        let m = std::fs::metadata(path).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn the_listing_is_the_writers_files_oldest_first_with_their_identities() {
        let dir = temp("listing");
        let path = dir.join("e.jsonl");
        let mut file = writer(&path, 5);
        for n in 0..=3 {
            file.append(format!("{n}\n").as_bytes()).unwrap();
        }
        let name = path.to_str().unwrap();
        let listed = listing(name);
        let names: Vec<_> = listed.iter().map(|&(k, _)| std::path::PathBuf::from(rotated(name, k))).collect();
        assert_eq!(names, oldest_first(&path, 5), "the writer's names and order");
        let ids: Vec<Id> = names.iter().map(|n| id(n)).collect();
        assert_eq!(listed, [(3, ids[0]), (2, ids[1]), (1, ids[2]), (0, ids[3])]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The followed file `0` is `.2` now; while `1` (`.1`) is read the writer rotates again:
    /// `2`, listed as `path`, is `.1` now, and still read, before the new `3`.
    #[test]
    fn a_rotation_while_a_rotated_file_is_read_skips_nothing() {
        let (dir, path, mut file, mut src) = followed("during-read", 5);
        file.append(b"1\n").unwrap();
        file.append(b"2\n").unwrap();
        let mut read = Vec::new();
        let gone = catch_up(&mut src, listing, |f| {
            read.push(text(f));
            if read.len() == 1 {
                file.append(b"3\n").unwrap();
            }
            Ok(true)
        })
        .unwrap();
        assert_eq!((read, gone), (vec!["1\n".to_string(), "2\n".into()], 0));
        assert_eq!((src.identity, text(&mut src)), (Some(id(&path)), "3\n".into()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A rotation between listing the files and opening one: the name now holds another
    /// file, which is not taken for the one listed.
    #[test]
    fn a_file_is_read_only_if_it_is_still_the_one_listed() {
        let (dir, _, mut file, mut src) = followed("after-listing", 5);
        file.append(b"1\n").unwrap();
        let mut lists = 0;
        let list = |p: &str| {
            let files = listing(p);
            lists += 1;
            if lists == 1 {
                file.append(b"2\n").unwrap(); // `1` was listed as the live file
            }
            files
        };
        let (read, gone) = read_all(&mut src, list);
        assert_eq!((read, gone), (vec!["1\n".to_string()], 0));
        assert_eq!(text(&mut src), "2\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Keeping two files: the followed `0` rotated out of them before the poll (what came
    /// between is unknown: a gap); then, between listing and opening, `4` is rotated away
    /// unread (another); what is left is read in order.
    #[test]
    fn files_rotated_away_before_they_are_read_are_counted() {
        let (dir, path, mut file, mut src) = followed("gone", 2);
        for n in 1..=3 {
            file.append(format!("{n}\n").as_bytes()).unwrap();
        }
        let (read, gone) = read_all(&mut src, listing);
        assert_eq!((read, gone), (vec!["1\n".to_string(), "2\n".into()], 1));
        assert_eq!(text(&mut src), "3\n");

        file.append(b"4\n").unwrap();
        // Every file stays open here, so no inode number is reused for a later one (as ext4
        // does at once): that, within the instant between listing and opening, is the one
        // change the identities do not tell.
        let mut pins = vec![std::fs::File::open(&path).unwrap()];
        let mut lists = 0;
        let list = |p: &str| {
            let files = listing(p);
            lists += 1;
            if lists == 1 {
                for n in 5..=7 {
                    file.append(format!("{n}\n").as_bytes()).unwrap();
                    pins.push(std::fs::File::open(&path).unwrap());
                }
            }
            files
        };
        let (read, gone) = read_all(&mut src, list);
        assert_eq!((read, gone), (vec!["5\n".to_string(), "6\n".into()], 1), "4 rotated away unread");
        assert_eq!(text(&mut src), "7\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotated_names_of_another_argument_are_found() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let files = args(&["e.jsonl", "e.jsonl.1", "e.jsonl.10"]);
        assert_eq!(rotated_argument(&files), Some((&files[1], &files[0])));
        assert_eq!(
            rotated_argument(&args(&["e.jsonl", "e.jsonl.x", "e.jsonl.+1", "f.jsonl.1", "e.jsonl.0", "e.jsonl."])),
            None
        );
        assert_eq!(rotated_argument(&args(&["e.jsonl.2", "a"])), None);
    }

    fn lines_of(input: &[u8]) -> Vec<Result<Vec<u8>, &'static str>> {
        let mut l = Lines::new(input);
        let mut out = Vec::new();
        loop {
            match l.next().unwrap() {
                Next::Line => out.push(Ok(std::mem::take(&mut l.line))),
                Next::Oversized => out.push(Err("oversized")),
                Next::Interrupted => unreachable!(),
                Next::End => {
                    match l.finish() {
                        Some(Next::Line) => out.push(Ok(std::mem::take(&mut l.line))),
                        Some(_) => out.push(Err("oversized")),
                        None => {}
                    }
                    return out;
                }
            }
        }
    }

    #[test]
    fn lines_are_split_bounded_and_the_last_one_kept() {
        assert_eq!(lines_of(b"a\nbb\n\nc"), vec![Ok(b"a".to_vec()), Ok(b"bb".to_vec()), Ok(vec![]), Ok(b"c".to_vec())]);
        let mut big = vec![b'x'; MAX_LINE + 10];
        big.extend_from_slice(b"\nok\n");
        big.extend(vec![b'y'; MAX_LINE + 1]);
        assert_eq!(lines_of(&big), vec![Err("oversized"), Ok(b"ok".to_vec()), Err("oversized")]);
    }

    #[test]
    fn type_filters_take_full_names_and_prefixes() {
        let f = |t: &str| Filter { types: vec![t.into()], ..Filter::default() };
        assert!(f("kernel.network").type_matches("kernel.network.connection_refused"));
        assert!(f("network").type_matches("kernel.network.connection_refused"));
        assert!(f("network.connection_refused").type_matches("kernel.network.connection_refused"));
        assert!(!f("network.connection").type_matches("kernel.network.connection_refused"));
        assert!(!f("net").type_matches("kernel.network.connection_refused"));
    }
}
