//! Container pressure observer: per-container CFS throttling (cpu.stat) and pressure stall
//! information (cgroup2 `cpu.pressure`, `memory.pressure`, `io.pressure`). No eBPF: a poller
//! on the poll thread reads each watched container's small files and emits
//! `kernel.container.cpu_throttling` / `memory_pressure` / `cpu_pressure` / `io_pressure`,
//! judged like the node observer's pressure: one event per crossing, re-armed only once the
//! value is a margin below its threshold, nothing while healthy.
//!
//! Containers are found by walking the cgroup hierarchies at start and again every
//! `rescan_interval_ms` (see [`cgroups`]). At most `max_containers` are watched; each one
//! beyond is counted once as a correlation drop (`container_not_watched`). A container whose
//! files vanish (it was removed) is dropped from the watch list without an error or an
//! event. One removed and made again under the same path between two polls (a restarted
//! container: its directory's inode, the cgroup id, changed) is watched afresh, as a new
//! container, and counted (`cgroup_replaced`): the interval across the restart is not judged.
//!
//! Status: running; degraded when the node has no per-cgroup PSI (no cgroup2 mount, or PSI
//! off in the kernel): then only throttling is judged and the reason says so; unsupported
//! when neither a cgroup2 nor a cgroup1 cpu hierarchy is mounted.

pub mod cgroups;
pub mod stat;

use super::container::classify::PageSize;
use super::node::psi::{self, percent_text, Crossing, PsiReading, Threshold};
use super::node::{pct, pressure_facts, Resource};
use super::poll::{PollContext, Poller, SharedSettings};
use super::{Follower, Observer, ObserverState, Start, Userspace};
use crate::evidence::{Facts, MemoryUse, Outcome, PressureFacts, Severity, ThrottlingFacts, WorkloadIds};
use crate::knobs::LocalKnobs;
use crate::stamp::{Draft, Stamper, Verdict};
use cgroups::{ContainerFiles, Layout, Version};
use stat::{CpuStat, Interval, ThrottleJudge};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapio_wire::compiled::ContainerPressureConfig;
use tapio_wire::CompiledConfig;

/// The observer's name in the agent's status.
pub const NAME: &str = "container_pressure";
/// Its evidence is container evidence (`kernel.container.*`).
const EVIDENCE_OBSERVER: &str = "container";
/// The correlation-drop reason of a container found beyond `max_containers`.
pub const NOT_WATCHED: &str = "container_not_watched";
/// The correlation-drop reason of a container's cgroup made again under its path between
/// two polls: the interval across it is not judged.
pub const REPLACED: &str = "cgroup_replaced";
/// Directories one rescan reads at most per hierarchy (a node runs a few hundred pods).
const MAX_WALK_DIRS: usize = 20_000;
/// The files read are a few hundred bytes; a longer one is not what the kernel writes.
const READ_BUF: usize = 4096;

/// The container pressure observer: CFS throttling and PSI per container, judged in
/// userspace (no eBPF).
pub static OBSERVER: Observer =
    Observer { name: NAME, enabled: |c| c.container_pressure.enabled, kernel: None, userspace: start };

fn start(start: &mut Start<'_>) -> Result<Userspace, String> {
    let shared = PressureSettings::new(start.generation, start.config.container_pressure.clone());
    let (state, poller) = PressureObserver::start(Arc::clone(&shared), Knobs::from(start.local));
    let mut userspace = Userspace { state: Some(state), ..Userspace::default() };
    if let Some(poller) = poller {
        userspace.pollers.push(Box::new(poller));
        userspace.followers.push(shared);
    }
    Ok(userspace)
}

/// The thresholds and switches the poller judges with, replaced when the controller's
/// config changes.
pub type PressureSettings = SharedSettings<ContainerPressureConfig>;

impl Follower for PressureSettings {
    fn follow(&self, config: &CompiledConfig, generation: u32) {
        self.set(generation, config.container_pressure.clone());
    }
}

/// This agent's own bounds and intervals (not fleet settings: see `LocalKnobs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knobs {
    pub poll_interval: Duration,
    pub rescan_interval: Duration,
    pub max_containers: usize,
}

impl From<&LocalKnobs> for Knobs {
    fn from(k: &LocalKnobs) -> Self {
        Self {
            poll_interval: Duration::from_millis(u64::from(k.pressure_poll_interval_ms.max(100))),
            rescan_interval: Duration::from_millis(u64::from(k.pressure_rescan_interval_ms.max(100))),
            max_containers: k.pressure_max_containers as usize,
        }
    }
}

fn kind(resource: Resource) -> &'static str {
    match resource {
        Resource::Memory => "kernel.container.memory_pressure",
        Resource::Cpu => "kernel.container.cpu_pressure",
        Resource::Io => "kernel.container.io_pressure",
    }
}

fn threshold_of(resource: Resource, c: &ContainerPressureConfig) -> u32 {
    match resource {
        Resource::Memory => c.psi_memory_some_avg10_percent,
        Resource::Cpu => c.psi_cpu_some_avg10_percent,
        Resource::Io => c.psi_io_some_avg10_percent,
    }
}

/// One throttling crossing's reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub version: Version,
    pub interval: Interval,
    pub interval_ns: u64,
    /// The counters at the end of the interval.
    pub totals: CpuStat,
    /// The quota (None: unlimited) and period, or None when they could not be read.
    pub quota: Option<(Option<u64>, u64)>,
}

/// Whose evidence it is and when: the container's ids, the config generation judged with,
/// and the moment of the reading.
#[derive(Debug, Clone, Copy)]
pub struct Subject {
    pub ids: WorkloadIds,
    pub generation: u32,
    pub boot_ns: u64,
}

/// The evidence of one throttling crossing. Pure.
pub fn throttling_evidence(t: &Throttled, threshold: Threshold, who: Subject, stamper: &mut Stamper) -> Verdict {
    let d = t.interval;
    let share = d.throttled_hundredths();
    let facts = ThrottlingFacts {
        cgroup_version: t.version.label(),
        interval_ns: t.interval_ns,
        periods: d.periods,
        throttled_periods: d.throttled,
        throttled_time_us: d.throttled_us,
        throttled_periods_percent: pct(share),
        nr_periods_total: t.totals.nr_periods,
        nr_throttled_total: t.totals.nr_throttled,
        throttled_time_total_us: t.totals.throttled_us,
        quota_us: t.quota.map(|(quota, _)| quota),
        period_us: t.quota.map(|(_, period)| period),
        threshold_percent: threshold.percent,
        rearm_below_percent: pct(threshold.rearm_below()),
    };
    let message = format!(
        "CFS bandwidth throttled the container in {} of {} periods ({}%) over {} ms, {} us throttled (threshold {}%)",
        d.throttled,
        d.periods,
        percent_text(share),
        t.interval_ns / 1_000_000,
        d.throttled_us,
        threshold.percent
    );
    stamper.stamp(Draft {
        kind: "kernel.container.cpu_throttling",
        observer: EVIDENCE_OBSERVER,
        severity: Severity::Warning,
        outcome: Outcome::Degraded,
        code: "CPU_THROTTLING",
        message,
        boot_ns: who.boot_ns,
        generation: who.generation,
        workload: who.ids,
        facts: Facts::Throttling(facts),
    })
}

/// The evidence of one container PSI crossing. Pure.
pub fn pressure_evidence(
    resource: Resource,
    reading: &PsiReading,
    threshold: Threshold,
    memory: Option<MemoryUse>,
    who: Subject,
    stamper: &mut Stamper,
) -> Verdict {
    let some = reading.some;
    let facts = PressureFacts { memory, ..pressure_facts(resource, reading, threshold) };
    let message = format!(
        "some tasks of the container were stalled on {} {}% of the last 10 s (threshold {}%)",
        resource.name(),
        percent_text(some.avg10),
        threshold.percent
    );
    stamper.stamp(Draft {
        kind: kind(resource),
        observer: EVIDENCE_OBSERVER,
        severity: Severity::Warning,
        outcome: Outcome::Degraded,
        code: resource.code(),
        message,
        boot_ns: who.boot_ns,
        generation: who.generation,
        workload: who.ids,
        facts: Facts::ContainerPressure(facts),
    })
}

/// Why a file could not be used.
enum Fault {
    /// The cgroup was removed: forget the container, quietly.
    Gone,
    /// Unreadable or not what the kernel writes: counted as malformed.
    Bad,
    /// Another cgroup is at the container's path: watch it afresh.
    Replaced,
}

fn fault(e: &std::io::Error) -> Fault {
    if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) {
        Fault::Gone
    } else {
        Fault::Bad
    }
}

/// Reads a small cgroup file into `buf`. Files are opened per read rather than kept open:
/// hundreds of containers times four files would outgrow a default descriptor limit, and
/// an open+read+close of a kernfs file costs microseconds.
fn read_into<'a>(path: &Path, buf: &'a mut [u8]) -> Result<&'a str, Fault> {
    let mut file = std::fs::File::open(path).map_err(|e| fault(&e))?;
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len == buf.len() {
                    return Err(Fault::Bad);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fault(&e)),
        }
    }
    std::str::from_utf8(&buf[..len]).map_err(|_| Fault::Bad)
}

/// A value from a small file; Err(Bad) when it is not one the kernel writes.
fn read_value<T>(path: &Path, buf: &mut [u8], parse: fn(&str) -> Option<T>) -> Result<T, Fault> {
    read_into(path, buf).and_then(|text| parse(text).ok_or(Fault::Bad))
}

/// One watched container.
struct Watched {
    /// Its cgroup path from the hierarchy root (the watch list is sorted by it).
    path: String,
    files: ContainerFiles,
    /// PSI files in `Resource::ALL` order, when the container has them.
    psi_files: Option<[PathBuf; 3]>,
    cpu_stat: Option<PathBuf>,
    last_cpu: Option<(CpuStat, Instant)>,
    throttling: Crossing,
    pressure: [Crossing; 3],
}

impl Watched {
    fn new(path: String, files: ContainerFiles) -> Self {
        let mut w = Self {
            path,
            files,
            psi_files: None,
            cpu_stat: None,
            last_cpu: None,
            throttling: Crossing::default(),
            pressure: Default::default(),
        };
        w.relocate(w.files.clone());
        w
    }

    /// Takes the container's files as found now, keeping what was judged so far: a part
    /// found later (a runtime makes a container's groups one hierarchy at a time) starts
    /// fresh, as it had no state.
    fn relocate(&mut self, mut files: ContainerFiles) {
        // Another cgroup at the same directory is the next poll's to find (it starts the
        // container afresh, counted): until then this is the one judged.
        if files.dir() == self.files.dir() {
            files.ino = self.files.ino;
        }
        let dir_of = |part: &Option<(PathBuf, Version)>| part.as_ref().map(|(dir, _)| dir.clone());
        if dir_of(&files.cpu) != dir_of(&self.files.cpu) || self.cpu_stat.is_none() {
            self.cpu_stat = files.cpu.as_ref().map(|(dir, _)| dir.join("cpu.stat"));
            // Counters of another file are no baseline for these.
            self.last_cpu = None;
        }
        if files.psi != self.files.psi || self.psi_files.is_none() {
            self.psi_files =
                files.psi.as_ref().map(|dir| Resource::ALL.map(|r| dir.join(format!("{}.pressure", r.name()))));
        }
        self.files = files;
    }

    /// Whether a part of the container (its CFS counters, its PSI) was missing when it was
    /// found, so the next rescan looks again.
    fn incomplete(&self) -> bool {
        self.cpu_stat.is_none() || self.psi_files.is_none()
    }

    /// The CFS quota (None: unlimited) and period; Err when they could not be read, as a
    /// missing quota would say there is none.
    fn quota(&self, buf: &mut [u8]) -> Result<(Option<u64>, u64), Fault> {
        match &self.files.cpu {
            Some((dir, Version::V2)) => read_value(&dir.join("cpu.max"), buf, stat::parse_cpu_max),
            Some((dir, Version::V1)) => Ok((
                read_value(&dir.join("cpu.cfs_quota_us"), buf, stat::parse_v1_quota)?,
                read_value(&dir.join("cpu.cfs_period_us"), buf, stat::parse_bytes)?,
            )),
            None => Err(Fault::Bad),
        }
    }

    /// The container's memory figures; Err when a file could not be read, as a null limit
    /// would say there is none.
    fn memory(&self, buf: &mut [u8]) -> Result<Option<MemoryUse>, Fault> {
        let Some((dir, version)) = self.files.memory.as_ref() else { return Ok(None) };
        Ok(Some(match version {
            Version::V2 => MemoryUse {
                usage_bytes: Some(read_value(&dir.join("memory.current"), buf, stat::parse_bytes)?),
                limit_bytes: read_value(&dir.join("memory.max"), buf, stat::parse_limit)?,
                high_bytes: read_value(&dir.join("memory.high"), buf, stat::parse_limit)?,
            },
            Version::V1 => MemoryUse {
                usage_bytes: Some(read_value(&dir.join("memory.usage_in_bytes"), buf, stat::parse_bytes)?),
                limit_bytes: read_value(&dir.join("memory.limit_in_bytes"), buf, |t| {
                    stat::parse_bytes(t).map(|bytes| stat::v1_limit(bytes, PageSize::of_this_system().0))
                })?,
                high_bytes: None,
            },
        }))
    }

    fn subject(&self, generation: u32) -> Subject {
        Subject { ids: self.files.ids, generation, boot_ns: crate::clock::boot_now_ns() }
    }

    /// Reads and judges this container once. Err(Gone) when it was removed, Err(Replaced)
    /// when another cgroup is at its path.
    fn poll(
        &mut self,
        config: &ContainerPressureConfig,
        generation: u32,
        buf: &mut [u8],
        ctx: &mut PollContext,
    ) -> Result<(), Fault> {
        // A restarted container's new cgroup may already have run more periods than the old
        // one had: no guard on the counters tells it from the old one, its identity does.
        if let Some(dir) = self.files.dir() {
            match std::fs::metadata(dir) {
                Ok(meta) if meta.ino() != self.files.ino => return Err(Fault::Replaced),
                Err(e) if matches!(fault(&e), Fault::Gone) => return Err(Fault::Gone),
                // Otherwise the reads below count what they cannot read.
                _ => {}
            }
        }
        self.poll_throttling(config, generation, buf, ctx)?;
        self.poll_psi(config, generation, buf, ctx)
    }

    fn poll_throttling(
        &mut self,
        config: &ContainerPressureConfig,
        generation: u32,
        buf: &mut [u8],
        ctx: &mut PollContext,
    ) -> Result<(), Fault> {
        let Some(path) = self.cpu_stat.as_ref().filter(|_| config.cpu_throttling) else {
            self.last_cpu = None;
            self.throttling.reset();
            return Ok(());
        };
        let now = Instant::now();
        let cur = match read_into(path, buf).map(stat::parse_cpu_stat) {
            Err(Fault::Gone) => return Err(Fault::Gone),
            Ok(Some(cur)) => cur,
            Err(_) | Ok(None) => {
                ctx.counters.malformed_events_total.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        let Some((prev, at)) = self.last_cpu.replace((cur, now)) else { return Ok(()) };
        // A counter that went backwards is a new cgroup at the same path: this read is its
        // baseline.
        let Some(interval) = Interval::between(&prev, &cur) else { return Ok(()) };
        let judge = ThrottleJudge {
            threshold: Threshold {
                percent: config.throttled_periods_percent,
                margin_percent: config.rearm_margin_percent,
            },
            min_periods: config.throttling_min_periods,
        };
        let (over, rearm) = judge.judge(&interval);
        if self.throttling.observe(over, rearm) {
            let quota = match self.quota(buf) {
                Ok(quota) => Some(quota),
                // Removed since cpu.stat was read: the throttling was real all the same.
                Err(Fault::Gone) => None,
                Err(_) => {
                    ctx.counters.malformed_events_total.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            let t = Throttled {
                version: self.files.cpu.as_ref().map_or(Version::V2, |(_, v)| *v),
                interval,
                interval_ns: now.duration_since(at).as_nanos() as u64,
                totals: cur,
                quota,
            };
            let v = throttling_evidence(&t, judge.threshold, self.subject(generation), ctx.stamper);
            ctx.deliver(NAME, v);
        }
        Ok(())
    }

    fn poll_psi(
        &mut self,
        config: &ContainerPressureConfig,
        generation: u32,
        buf: &mut [u8],
        ctx: &mut PollContext,
    ) -> Result<(), Fault> {
        let Some(files) = self.psi_files.as_ref().filter(|_| config.psi) else {
            self.pressure = Default::default();
            return Ok(());
        };
        for (i, resource) in Resource::ALL.into_iter().enumerate() {
            let percent = threshold_of(resource, config);
            if percent == 0 {
                self.pressure[i].reset();
                continue;
            }
            let reading = match read_into(&files[i], buf) {
                Err(Fault::Gone) => return Err(Fault::Gone),
                Err(_) => None,
                Ok(text) => psi::parse(text),
            };
            let Some(reading) = reading else {
                ctx.counters.malformed_events_total.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let threshold = Threshold { percent, margin_percent: config.rearm_margin_percent };
            let avg10 = reading.some.avg10;
            if self.pressure[i].observe(threshold.over(avg10), avg10 < threshold.rearm_below()) {
                let memory = match (resource == Resource::Memory).then(|| self.memory(buf)) {
                    Some(Err(Fault::Gone)) => return Err(Fault::Gone),
                    // Left out rather than null, which would say there is no limit.
                    Some(Err(_)) => {
                        ctx.counters.malformed_events_total.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    Some(Ok(memory)) => memory,
                    None => None,
                };
                let v = pressure_evidence(resource, &reading, threshold, memory, self.subject(generation), ctx.stamper);
                ctx.deliver(NAME, v);
            }
        }
        Ok(())
    }
}

/// Why the node has no per-cgroup PSI, or None when it has.
fn psi_missing(layout: &Layout) -> Option<String> {
    let Some(unified) = &layout.unified else {
        return Some("no cgroup2 hierarchy is mounted, and per-cgroup pressure (PSI) exists only there".into());
    };
    let readable = |p: &Path| std::fs::read_to_string(p).ok().and_then(|t| psi::parse(&t)).is_some();
    if readable(&unified.join("memory.pressure")) || readable(Path::new("/proc/pressure/memory")) {
        None
    } else {
        Some("this kernel reports no pressure (PSI): CONFIG_PSI off or psi=0".into())
    }
}

pub struct PressureObserver {
    settings: Arc<PressureSettings>,
    knobs: Knobs,
    layout: Layout,
    /// Sorted by path. (Sorted vectors rather than B-trees: the same lookups in a
    /// fraction of the agent's code size.)
    watched: Vec<Watched>,
    /// Containers beyond the bound at the last rescan (each counted once), sorted.
    not_watched: Vec<String>,
    next_rescan: Instant,
    /// Containers left unwatched by the start-up walk, counted at the first poll (the
    /// counters are the poll thread's).
    uncounted: u64,
    buf: Vec<u8>,
}

impl PressureObserver {
    /// Finds this node's hierarchies and containers; None when nothing can be observed.
    pub fn start(settings: Arc<PressureSettings>, knobs: Knobs) -> (ObserverState, Option<Self>) {
        Self::start_with(settings, knobs, Layout::of_this_node())
    }

    pub fn start_with(settings: Arc<PressureSettings>, knobs: Knobs, layout: Layout) -> (ObserverState, Option<Self>) {
        if layout.unified.is_none() && layout.cpu_v1.is_none() {
            let why = "neither a cgroup2 nor a cgroup1 cpu hierarchy is mounted: containers cannot be read";
            return (ObserverState::Unsupported(why.into()), None);
        }
        let state = match psi_missing(&layout) {
            None => ObserverState::Running,
            Some(why) => ObserverState::Degraded(format!(
                "{why}; container memory_pressure, cpu_pressure and io_pressure are not reported, cpu_throttling is"
            )),
        };
        let mut observer = Self {
            settings,
            knobs,
            layout,
            watched: Vec::new(),
            not_watched: Vec::new(),
            next_rescan: Instant::now(),
            uncounted: 0,
            buf: vec![0; READ_BUF],
        };
        let skipped = observer.rescan();
        observer.uncounted = skipped;
        // A hybrid node's runtime may make no cgroup2 group for a container: its PSI is then
        // unknown and only its throttling is judged. Said here, as the status cannot.
        let without_psi = observer.watched.iter().filter(|w| w.psi_files.is_none()).count();
        log::info!(
            "observer {NAME}: watching {} containers, {skipped} beyond max_containers not watched, \
             {without_psi} without per-cgroup PSI (throttling only)",
            observer.watched.len(),
        );
        (state, Some(observer))
    }

    /// How many containers are watched now.
    pub fn watched(&self) -> usize {
        self.watched.len()
    }

    /// Walks the hierarchies again: new containers are watched (up to the bound), removed
    /// ones forgotten. Returns how many containers newly went unwatched (beyond the bound).
    fn rescan(&mut self) -> u64 {
        let mut found = Vec::new();
        for root in self.layout.roots() {
            if !cgroups::find_containers(root, MAX_WALK_DIRS, &mut found) {
                log::warn!("observer {NAME}: the walk of {} stopped after {MAX_WALK_DIRS} directories", root.display());
            }
        }
        found.sort_unstable();
        found.dedup();
        self.watched.retain(|w| found.binary_search(&w.path).is_ok());
        for w in self.watched.iter_mut().filter(|w| w.incomplete()) {
            if let Some(files) = cgroups::locate(&self.layout, &w.path) {
                w.relocate(files);
            }
        }
        let bound = self.knobs.max_containers;
        let mut not_watched = Vec::new();
        for path in found {
            let Err(at) = self.watched.binary_search_by(|w| w.path.cmp(&path)) else { continue };
            if self.watched.len() >= bound {
                not_watched.push(path);
            } else if let Some(files) = cgroups::locate(&self.layout, &path) {
                self.watched.insert(at, Watched::new(path, files));
            }
        }
        let newly = not_watched.iter().filter(|p| self.not_watched.binary_search(p).is_err()).count() as u64;
        self.not_watched = not_watched;
        self.next_rescan = Instant::now() + self.knobs.rescan_interval;
        newly
    }
}

impl Poller for PressureObserver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn interval(&self) -> Duration {
        self.knobs.poll_interval
    }

    fn poll(&mut self, ctx: &mut PollContext) {
        let (generation, config) = self.settings.get();
        if !config.enabled {
            return;
        }
        if Instant::now() >= self.next_rescan {
            self.uncounted += self.rescan();
        }
        for _ in 0..std::mem::take(&mut self.uncounted) {
            ctx.counters.correlation_drop(NAME, NOT_WATCHED);
        }
        let (layout, buf) = (&self.layout, &mut self.buf);
        self.watched.retain_mut(|w| match w.poll(&config, generation, buf, ctx) {
            Err(Fault::Gone) => false,
            Err(Fault::Replaced) => {
                ctx.counters.correlation_drop(NAME, REPLACED);
                let Some(files) = cgroups::locate(layout, &w.path) else { return false };
                // As any new container: no state of the old one, and a first read now that
                // is its baseline.
                *w = Watched::new(std::mem::take(&mut w.path), files);
                !matches!(w.poll(&config, generation, buf, ctx), Err(Fault::Gone))
            }
            _ => true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::testing::{emitted, stamper};

    #[test]
    fn throttling_evidence_carries_the_interval_and_the_totals() {
        let t = Throttled {
            version: Version::V1,
            interval: Interval { periods: 20, throttled: 19, throttled_us: 1_710_000 },
            interval_ns: 2_000_000_000,
            totals: CpuStat { nr_periods: 120, nr_throttled: 110, throttled_us: 9_900_000 },
            quota: Some((Some(10_000), 100_000)),
        };
        let threshold = Threshold { percent: 25, margin_percent: 5 };
        let ids = WorkloadIds { cgroup_id: 0, mem_cgroup_id: 42 };
        let e = emitted(throttling_evidence(&t, threshold, Subject { ids, generation: 3, boot_ns: 1 }, &mut stamper()));
        assert_eq!(
            (e.kind, e.observer, e.error.code, e.config_generation, e.workload_ids),
            ("kernel.container.cpu_throttling", "container", "CPU_THROTTLING", 3, ids)
        );
        assert_eq!(
            e.error.message,
            "CFS bandwidth throttled the container in 19 of 20 periods (95.00%) over 2000 ms, 1710000 us throttled (threshold 25%)"
        );
        let json = serde_json::to_value(&e).unwrap();
        let f = &json["facts"];
        assert_eq!((f["periods"].as_u64(), f["throttled_periods"].as_u64()), (Some(20), Some(19)));
        assert_eq!((f["nr_throttled_total"].as_u64(), f["quota_us"].as_u64()), (Some(110), Some(10_000)));
        assert_eq!(
            (f["cgroup_version"].as_str(), f["throttled_periods_percent"].as_f64()),
            (Some("cgroup1"), Some(95.0))
        );
        assert_eq!(f["rearm_below_percent"].as_f64(), Some(20.0));
    }

    #[test]
    fn memory_pressure_says_how_close_the_limit_is_and_others_do_not() {
        let reading = psi::parse(
            "some avg10=31.00 avg60=9.00 avg300=2.00 total=100\nfull avg10=20.00 avg60=5.00 avg300=1.00 total=50\n",
        )
        .unwrap();
        let t = Threshold { percent: 10, margin_percent: 5 };
        let who = Subject { ids: WorkloadIds { cgroup_id: 77, mem_cgroup_id: 0 }, generation: 0, boot_ns: 1 };
        let mem = MemoryUse { usage_bytes: Some(60 << 20), limit_bytes: None, high_bytes: Some(64 << 20) };
        let e = emitted(pressure_evidence(Resource::Memory, &reading, t, Some(mem), who, &mut stamper()));
        assert_eq!((e.kind, e.error.code), ("kernel.container.memory_pressure", "MEMORY_PRESSURE"));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["facts"]["memory"]["usage_bytes"], 60 << 20);
        assert_eq!(json["facts"]["memory"]["limit_bytes"], serde_json::Value::Null, "unlimited is null, not absent");
        assert_eq!(json["facts"]["full_avg10_percent"], 20.0);
        let e = emitted(pressure_evidence(Resource::Io, &reading, t, None, who, &mut stamper()));
        assert_eq!(e.kind, "kernel.container.io_pressure");
        assert!(serde_json::to_value(&e).unwrap()["facts"].get("memory").is_none());
    }

    fn knobs() -> Knobs {
        Knobs::from(&LocalKnobs::default())
    }

    /// A runtime makes a container's groups one hierarchy at a time: a part missing when
    /// the container was found is picked up by a later rescan, and the bound holds.
    #[test]
    fn a_part_made_after_discovery_is_found_by_the_next_rescan() {
        let base = std::env::temp_dir().join(format!("tapio-i15-pressure-relocate-{}", std::process::id()));
        let (cpu_root, unified) = (base.join("cpu"), base.join("unified"));
        let rel = "kubepods/pod1b2c3d4e-5f60-4718-89ab-cdef01234567";
        let cid = "ab".repeat(32);
        let other = "cd".repeat(32);
        for id in [&cid, &other] {
            let dir = cpu_root.join(rel).join(id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cpu.stat"), "nr_periods 1\nnr_throttled 0\nthrottled_time 0\n").unwrap();
        }
        std::fs::create_dir_all(&unified).unwrap();
        let layout = Layout { unified: Some(unified.clone()), cpu_v1: Some(cpu_root), memory_v1: None };
        let settings = PressureSettings::new(0, ContainerPressureConfig::default());
        let knobs = Knobs { max_containers: 1, ..knobs() };
        let (_, observer) = PressureObserver::start_with(settings, knobs, layout);
        let mut observer = observer.unwrap();
        assert_eq!((observer.watched(), observer.not_watched.len()), (1, 1), "the bound holds");
        let w = &observer.watched[0];
        assert!(w.cpu_stat.is_some() && w.psi_files.is_none(), "no cgroup2 group yet");
        let v2 = unified.join(rel).join(&cid);
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cpu.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        assert_eq!(observer.rescan(), 0, "the unwatched one was counted already");
        let w = &observer.watched[0];
        assert_eq!(w.psi_files.as_ref().map(|f| f[1].clone()), Some(v2.join("cpu.pressure")));
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A fake cgroup2 tree with one container, its observer, and what a poll emits.
    struct Fake {
        base: PathBuf,
        dir: PathBuf,
        observer: PressureObserver,
        stamper: Stamper,
        queue: crate::queue::QueueSender,
        rx: crate::queue::QueueReceiver,
        counters: crate::counters::Counters,
    }

    impl Fake {
        fn new(name: &str, files: &[(&str, &str)]) -> Self {
            let base = std::env::temp_dir().join(format!("tapio-pressure-{name}-{}", std::process::id()));
            let dir = base.join("unified/kubepods/pod1b2c3d4e-5f60-4718-89ab-cdef01234567").join("ab".repeat(32));
            std::fs::create_dir_all(&dir).unwrap();
            for (file, text) in files {
                std::fs::write(dir.join(file), text).unwrap();
            }
            let layout = Layout { unified: Some(base.join("unified")), ..Layout::default() };
            let settings = PressureSettings::new(0, ContainerPressureConfig::default());
            let observer = PressureObserver::start_with(settings, knobs(), layout).1.unwrap();
            assert_eq!(observer.watched(), 1);
            let (queue, rx) = crate::queue::bounded(16, 1 << 16);
            Self { base, dir, observer, stamper: stamper(), queue, rx, counters: Default::default() }
        }

        /// Polls once; the evidence emitted, each with the cgroup id it names.
        fn poll(&mut self) -> Vec<(u64, serde_json::Value)> {
            let mut ctx = PollContext { stamper: &mut self.stamper, queue: &self.queue, counters: &self.counters };
            self.observer.poll(&mut ctx);
            let (mut out, mut encoded) = (Vec::new(), crate::queue::Encoded::default());
            while self.rx.try_recv(&mut encoded) {
                let mut line = Vec::new();
                encoded
                    .write_line(&mut line, |l| {
                        l.extend_from_slice(b"null");
                        Ok::<_, ()>(())
                    })
                    .unwrap();
                out.push((encoded.workload_ids().cgroup_id, serde_json::from_slice(&line).unwrap()));
            }
            out
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    fn cpu_stat(periods: u64, throttled: u64) -> String {
        format!("usage_usec 1\nnr_periods {periods}\nnr_throttled {throttled}\nthrottled_usec {}\n", throttled * 1000)
    }

    /// `docker restart` between two polls: the cgroup is removed and made again under the
    /// same path. The new one's counters (30 more periods, 9 throttled: 30 %) paired with the
    /// old one's would cross the 25 % threshold in facts of neither cgroup.
    #[test]
    fn a_cgroup_made_again_under_the_same_path_is_a_new_container() {
        let mut f = Fake::new("restart", &[("cpu.stat", &cpu_stat(10, 0))]);
        let ino = |dir: &Path| std::fs::metadata(dir).unwrap().ino();
        let old_id = ino(&f.dir);
        assert!(f.poll().is_empty(), "the first read is a baseline");
        // Made beside and moved into place, so that the old and new directories exist at
        // once and cannot share an inode.
        let new = f.base.join("new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("cpu.stat"), cpu_stat(40, 9)).unwrap();
        std::fs::remove_dir_all(&f.dir).unwrap();
        std::fs::rename(&new, &f.dir).unwrap();
        let new_id = ino(&f.dir);
        assert_ne!(new_id, old_id);
        assert!(f.poll().is_empty(), "the first read of the new cgroup is its baseline");
        assert_eq!(f.counters.snapshot().correlation_drops.get("container_pressure.cgroup_replaced"), Some(&1));
        std::fs::write(f.dir.join("cpu.stat"), cpu_stat(80, 29)).unwrap();
        let events = f.poll();
        assert_eq!(events.len(), 1);
        let (id, e) = &events[0];
        assert_eq!((*id, e["type"].as_str()), (new_id, Some("kernel.container.cpu_throttling")));
        assert_eq!((e["facts"]["periods"].as_u64(), e["facts"]["throttled_periods"].as_u64()), (Some(40), Some(20)));
    }

    /// An unreadable quota is left out and counted, never reported as null, which says the
    /// container has none; "max" is no quota.
    #[test]
    fn a_quota_that_cannot_be_read_is_not_reported_as_none() {
        let mut f = Fake::new("quota", &[("cpu.stat", &cpu_stat(10, 0)), ("cpu.max", "garbage\n")]);
        assert!(f.poll().is_empty(), "the first read is a baseline");
        std::fs::write(f.dir.join("cpu.stat"), cpu_stat(50, 20)).unwrap();
        let events = f.poll();
        assert_eq!(events.len(), 1);
        let facts = &events[0].1["facts"];
        assert_eq!(events[0].1["type"], "kernel.container.cpu_throttling");
        assert!(facts.get("quota_us").is_none() && facts.get("period_us").is_none(), "{facts}");
        assert_eq!(f.counters.snapshot().malformed_events_total, 1);
        // Re-armed, then crossings with no quota and with one.
        std::fs::write(f.dir.join("cpu.stat"), cpu_stat(90, 20)).unwrap();
        assert!(f.poll().is_empty());
        std::fs::write(f.dir.join("cpu.stat"), cpu_stat(130, 40)).unwrap();
        std::fs::write(f.dir.join("cpu.max"), "max 100000\n").unwrap();
        let events = f.poll();
        let facts = &events[0].1["facts"];
        assert_eq!(
            (facts.get("quota_us"), facts["period_us"].as_u64()),
            (Some(&serde_json::Value::Null), Some(100_000))
        );
        std::fs::write(f.dir.join("cpu.stat"), cpu_stat(170, 40)).unwrap();
        assert!(f.poll().is_empty());
        std::fs::write(f.dir.join("cpu.stat"), cpu_stat(210, 60)).unwrap();
        std::fs::write(f.dir.join("cpu.max"), "50000 100000\n").unwrap();
        let events = f.poll();
        assert_eq!(events[0].1["facts"]["quota_us"].as_u64(), Some(50_000));
        assert_eq!(f.counters.snapshot().malformed_events_total, 1);
    }

    /// An unreadable memory limit is left out and counted, never reported as "no limit";
    /// "max" is no limit.
    #[test]
    fn a_memory_limit_that_cannot_be_read_is_not_reported_as_none() {
        let psi = |avg10| {
            format!("some avg10={avg10}.00 avg60=0.00 avg300=0.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
        };
        let mut f = Fake::new(
            "memory",
            &[
                ("cpu.pressure", &psi(0)),
                ("io.pressure", &psi(0)),
                ("memory.pressure", &psi(40)),
                ("memory.current", "1048576\n"),
                ("memory.max", "garbage\n"),
                ("memory.high", "max\n"),
            ],
        );
        let events = f.poll();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].1["type"], "kernel.container.memory_pressure");
        assert!(events[0].1["facts"].get("memory").is_none(), "{}", events[0].1);
        assert_eq!(f.counters.snapshot().malformed_events_total, 1);
        // Re-armed, then a crossing with no limit.
        std::fs::write(f.dir.join("memory.pressure"), psi(0)).unwrap();
        assert!(f.poll().is_empty());
        std::fs::write(f.dir.join("memory.pressure"), psi(40)).unwrap();
        std::fs::write(f.dir.join("memory.max"), "max\n").unwrap();
        let events = f.poll();
        let memory = &events[0].1["facts"]["memory"];
        assert_eq!((memory["usage_bytes"].as_u64(), memory["limit_bytes"].is_null()), (Some(1 << 20), true));
        assert_eq!(f.counters.snapshot().malformed_events_total, 1);
    }

    #[test]
    fn no_cgroup_hierarchy_is_unsupported() {
        let settings = PressureSettings::new(0, ContainerPressureConfig::default());
        let (state, poller) = PressureObserver::start_with(settings, knobs(), Layout::default());
        assert!(poller.is_none());
        assert!(matches!(state, ObserverState::Unsupported(ref why) if why.contains("cgroup")), "{state:?}");
    }

    #[test]
    fn a_cgroup1_only_node_keeps_throttling_and_says_psi_is_missing() {
        let layout = Layout { cpu_v1: Some(std::env::temp_dir()), ..Layout::default() };
        let settings = PressureSettings::new(0, ContainerPressureConfig::default());
        let (state, poller) = PressureObserver::start_with(settings, knobs(), layout);
        assert!(poller.is_some());
        match state {
            ObserverState::Degraded(why) => {
                assert!(why.contains("no cgroup2 hierarchy"), "{why}");
                assert!(why.contains("cpu_throttling is"), "{why}");
            }
            other => panic!("expected degraded, got {other:?}"),
        }
    }
}
