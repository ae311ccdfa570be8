//! Agent start-up and shutdown: loads what can be loaded, says clearly what attached and
//! what did not, runs the drain and sink threads, and flushes everything on SIGTERM/SIGINT.

use crate::carriers::{Carriers, ObserverSettings};
use crate::clock::BootToWall;
use crate::config::AgentConfig;
use crate::controller::client::Client;
use crate::controller::outbox::{Outbox, OutboxSink};
use crate::controller::state::{self, AppliedConfig};
use crate::controller::{apply, http::Endpoint, ControllerConfig, Token};
use crate::counters::Counters;
use crate::drain::Drain;
use crate::observers::poll::{PollThread, Poller};
use crate::observers::{self, ClassifierContext, ObserverState, Running, RuntimeFacts, Start, REGISTRY};
use crate::shutdown::ShutdownSignal;
use crate::sink_stage::SinkStage;
use crate::sinks::{FileSink, Sink, StdoutSink};
use crate::stamp::Stamper;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tapio_util::collect::btree_map;

/// Shutdown bounds. From SIGTERM/SIGINT the agent exits within their sum plus one
/// 200 ms tick (at most about 15 s; README "Start-up, status and shutdown"): whatever a step could
/// not finish in its time is counted as lost, by name, and the final counters are logged.
/// The drain empties the rings within `drain::SHUTDOWN_DRAIN`; this adds its margin.
const SHUTDOWN_DRAIN_JOIN: Duration = Duration::from_secs(3);
/// The poll thread ends after at most one sampling pass.
const SHUTDOWN_POLL_JOIN: Duration = Duration::from_secs(1);
/// The sink stage writes out what is queued (a stdout pipe nobody reads blocks it for good).
pub const SHUTDOWN_SINKS: Duration = Duration::from_secs(5);
/// The controller link sends what is in its outbox (`client::SHUTDOWN_FLUSH`), plus the
/// end of a request that was in flight when shutdown began.
const SHUTDOWN_CONTROLLER_JOIN: Duration = Duration::from_secs(3);

/// Waits for `thread` at most `within`; false (the thread still running) when it did not
/// end in time. A thread that panicked is logged.
fn join_within(what: &str, thread: std::thread::JoinHandle<()>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            log::warn!("shutdown: the {what} did not finish within {} s", within.as_secs());
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if thread.join().is_err() {
        log::error!("{what} panicked");
    }
    true
}

/// Where each observer ended up after start-up.
pub struct StartupReport {
    pub observers: Vec<(&'static str, ObserverState)>,
    /// Each observer's programs and what became of them, and why it failed (in registry
    /// order, as `observers`): the `status` JSON line.
    pub details: Vec<ObserverDetail>,
}

/// One observer in the `status` JSON line.
#[derive(serde::Serialize)]
pub struct ObserverDetail {
    name: &'static str,
    /// `running`, `degraded`, `failed`, `disabled` or `unsupported`.
    state: &'static str,
    /// Why it is not running (null when it is, or is disabled).
    reason: Option<String>,
    /// For a failed kernel half: `not_permitted`, `no_btf`, `abi_mismatch`,
    /// `missing_hook` or `other` (`LoadError::kind`).
    reason_kind: Option<&'static str>,
    /// Each program of its kernel half (empty without one, or when it did not load).
    programs: Vec<ProgramDetail>,
}

#[derive(serde::Serialize)]
struct ProgramDetail {
    program: &'static str,
    hook: String,
    attached: bool,
    error_kind: Option<&'static str>,
    error: Option<String>,
}

/// The `status` JSON line: the start-up outcome as data (what the `observer …:` and
/// `ready:` lines say for people).
#[derive(serde::Serialize)]
struct StartupStatus<'a> {
    node: &'a str,
    observers: &'a [ObserverDetail],
    sinks: &'a [&'static str],
}

impl StartupReport {
    fn push(
        &mut self,
        name: &'static str,
        state: ObserverState,
        programs: &[observers::ProgramStatus],
        failure: Option<&observers::LoadError>,
    ) {
        let reason = match &state {
            ObserverState::Running | ObserverState::Disabled => None,
            ObserverState::Degraded(why) | ObserverState::Failed(why) | ObserverState::Unsupported(why) => {
                Some(why.clone())
            }
        };
        let programs = programs
            .iter()
            .map(|p| ProgramDetail {
                program: p.program,
                hook: p.hook.to_string(),
                attached: p.result.is_ok(),
                error_kind: p.result.as_ref().err().map(observers::LoadError::kind),
                error: p.result.as_ref().err().map(ToString::to_string),
            })
            .collect();
        let reason_kind = failure.map(observers::LoadError::kind);
        self.details.push(ObserverDetail { name, state: state.label(), reason, reason_kind, programs });
        self.observers.push((name, state));
    }
}

pub fn node_name(configured: Option<&str>) -> String {
    if let Some(name) = configured {
        return name.to_string();
    }
    if let Ok(name) = std::env::var("NODE_NAME") {
        if !name.trim().is_empty() {
            return name;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Classic tracepoints attach through tracefs; a node that has not mounted it gets it
/// mounted at its standard place (the alternative is attaching nothing).
fn ensure_tracefs() {
    let events = Path::new("/sys/kernel/tracing/events");
    if events.exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return;
    }
    // SAFETY: the strings are NUL-terminated literals.
    let rc = unsafe {
        libc::mount(c"tracefs".as_ptr(), c"/sys/kernel/tracing".as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    if rc == 0 {
        log::info!("mounted tracefs at /sys/kernel/tracing (tracepoints attach through it)");
    } else {
        log::warn!("tracefs is not mounted and mounting it failed: {}", std::io::Error::last_os_error());
    }
}

fn build_sinks(config: &AgentConfig, counters: &Arc<Counters>) -> Result<Vec<Box<dyn Sink>>, String> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if config.sinks.stdout {
        let stdout = StdoutSink::new(Arc::clone(counters)).map_err(|e| format!("starting the stdout writer: {e}"))?;
        sinks.push(Box::new(stdout));
    }
    if let Some(file) = &config.sinks.file {
        let sink = FileSink::open(file).map_err(|e| format!("opening file sink {}: {e}", file.path.display()))?;
        sinks.push(Box::new(sink));
    }
    if sinks.is_empty() && config.controller.is_none() {
        return Err("no sink configured: enable sinks.stdout, set sinks.file (or --file), or [controller]".into());
    }
    Ok(sinks)
}

/// Starts every observer of the registry that `settings` enables, in registry order.
fn start_observers(
    settings: &ObserverSettings,
    local: &crate::config::LocalKnobs,
    carriers: &mut Carriers,
    report: &mut StartupReport,
    pollers: &mut Vec<Box<dyn Poller>>,
    learner: Option<tapio_identity::Learner>,
) -> Vec<Running> {
    ensure_tracefs();
    let btf = match aya::Btf::from_sys_fs() {
        Ok(btf) => Some(btf),
        Err(e) => {
            log::error!("kernel BTF unavailable ({e}): CO-RE objects cannot be relocated on this kernel");
            None
        }
    };
    let facts = RuntimeFacts::of_this_node();
    let (config, generation) = (&settings.config, settings.generation);
    let mut running = Vec::new();
    for observer in REGISTRY {
        let name = observer.name;
        if !(observer.enabled)(config) {
            report.push(name, ObserverState::Disabled, &[], None);
            continue;
        }
        let mut kernel = match &observer.kernel {
            Some(half) => match observers::load_kernel_half(half, btf.as_ref(), config, generation, facts) {
                Ok((loaded, carrier)) => Some((half, loaded, carrier)),
                Err(e) => {
                    failed(name, e.to_string(), report, Some(&e));
                    continue;
                }
            },
            None => None,
        };
        let mut start =
            Start { config, generation, local, ebpf: kernel.as_mut().and_then(|(_, loaded, _)| loaded.ebpf.as_mut()) };
        let userspace = match (observer.userspace)(&mut start) {
            Ok(u) => u,
            Err(e) => {
                failed(name, e, report, None);
                continue;
            }
        };
        let mut programs = Vec::new();
        let state = match kernel {
            Some((half, loaded, carrier)) => {
                for p in &loaded.programs {
                    match &p.result {
                        Ok(()) => log::info!("observer {name}: attached {} ({})", p.hook, p.program),
                        Err(e) => log::warn!("observer {name}: NOT attached {} ({}): {e}", p.hook, p.program),
                    }
                }
                let state = userspace.state.unwrap_or_else(|| observers::state_of(&loaded.programs));
                let mut ctx = ClassifierContext {
                    programs: &loaded.programs,
                    learner: learner.clone(),
                    config,
                    generation,
                    followers: &mut carriers.followers,
                };
                let classifier = (half.classifier)(&mut ctx);
                carriers.kernel.push((name, carrier));
                programs.clone_from(&loaded.programs);
                running.push(Running { name, counters: half.counters, loaded, classifier });
                state
            }
            None => userspace.state.unwrap_or(ObserverState::Running),
        };
        match &state {
            ObserverState::Running | ObserverState::Disabled => log::info!("observer {name}: {state}"),
            _ => log::warn!("observer {name}: {state}"),
        }
        pollers.extend(userspace.pollers);
        carriers.followers.extend(userspace.followers);
        report.push(name, state, &programs, None);
    }
    running
}

fn failed(name: &'static str, reason: String, report: &mut StartupReport, cause: Option<&observers::LoadError>) {
    let state = ObserverState::Failed(reason);
    log::error!("observer {name}: {state}");
    report.push(name, state, &[], cause);
}

/// Controller mode, prepared before the observers load (its saved config judges from the
/// first event).
struct ControllerSetup {
    settings: ControllerConfig,
    endpoint: Endpoint,
    token: Option<Token>,
    applied: Option<AppliedConfig>,
    outbox: Arc<Outbox>,
}

impl ControllerSetup {
    fn prepare(c: &ControllerConfig) -> Result<Self, String> {
        let endpoint = Endpoint::parse(&c.url).map_err(|e| e.to_string())?;
        let token = c.token_file.as_deref().map(Token::read).transpose()?;
        let applied = match &c.state_file {
            Some(path) => match state::load(path) {
                Ok(Some(a)) if apply::settings_from(a.generation, &a.config).is_ok() => {
                    log::info!(
                        "using saved controller config {} ({}) until the controller answers",
                        a.generation,
                        a.config_hash
                    );
                    Some(a)
                }
                Ok(Some(_)) => {
                    log::warn!("saved controller config is out of range for this agent: ignoring it");
                    None
                }
                Ok(None) => None,
                Err(e) => {
                    log::warn!("{e}: starting unconfigured");
                    None
                }
            },
            None => None,
        };
        if applied.is_none() {
            log::info!("no controller config yet: running on local defaults (unconfigured)");
        }
        log::info!("controller mode: {} (plaintext HTTP: for in-cluster or trusted networks)", c.url);
        Ok(Self { settings: c.clone(), endpoint, token, applied, outbox: Outbox::new(c.queue_capacity) })
    }

    fn into_client(self, node: &str, report: &StartupReport, counters: Arc<Counters>, carriers: Carriers) -> Client {
        let observers = btree_map(
            report
                .observers
                .iter()
                .map(|(name, state)| (name.to_string(), tapio_wire::ObserverStatus::from(state.label()))),
        );
        let mut object_sizes = BTreeMap::new();
        for o in REGISTRY {
            if let Some(k) = &o.kernel {
                object_sizes.insert(o.name.to_string(), k.object.raw_len() as u64);
            }
        }
        Client {
            agent_id: self.settings.agent_id.clone().unwrap_or_else(|| node.to_string()),
            settings: self.settings,
            endpoint: self.endpoint,
            token: self.token,
            node: node.to_string(),
            outbox: self.outbox,
            counters,
            carriers: Arc::new(Mutex::new(carriers)),
            applied: Arc::new(Mutex::new(self.applied)),
            observers,
            object_sizes,
        }
    }
}

fn log_counters(label: &str, counters: &Counters) {
    match serde_json::to_string(&counters.snapshot()) {
        Ok(json) => log::info!("{label} {json}"),
        Err(e) => log::error!("serializing counters: {e}"),
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: AgentConfig, node: String) -> Result<(), String> {
    let shutdown = Arc::new(AtomicBool::new(false));
    let signal = ShutdownSignal::install(Arc::clone(&shutdown))?;

    let counters = Arc::new(Counters::default());
    let mut sinks = build_sinks(&config, &counters)?;
    let controller = match &config.controller {
        Some(c) => Some(ControllerSetup::prepare(c)?),
        None => None,
    };
    let settings = match controller.as_ref().and_then(|c| c.applied.clone()) {
        Some(applied) => apply::settings_from(applied.generation, &applied.config)
            .map_err(|e| format!("saved controller config: {e}"))?,
        None => ObserverSettings { generation: 0, config: config.observers.clone() },
    };
    let mut carriers = Carriers::default();
    let mut report = StartupReport { observers: Vec::new(), details: Vec::new() };
    let mut pollers: Vec<Box<dyn Poller>> = Vec::new();
    let mut identity = match tapio_identity::Resolver::new(tapio_identity::Config {
        capacity: config.identity_cache_capacity,
        learned_capacity: config.identity_cache_capacity,
        ..tapio_identity::Config::default()
    }) {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!("workload identity unavailable ({e}): evidence will carry cgroup ids only");
            None
        }
    };
    // The hierarchies evidence names workloads by (see sink_stage::pick_cgroup): their new
    // cgroups are learned from the kernel as they are made, the existing ones by one walk
    // after the hook is attached, so a cgroup removed before its evidence is resolved is
    // still named.
    let named = [tapio_identity::CgroupHierarchy::Unified, tapio_identity::CgroupHierarchy::v1("memory")];
    let learner = identity.as_ref().map(|r| r.learner(&named));
    let observers = start_observers(&settings, &config.local, &mut carriers, &mut report, &mut pollers, learner);
    if let Some(resolver) = identity.as_mut() {
        for h in named.iter().filter(|h| resolver.mounted_in_cgroup_namespace(h)) {
            log::warn!("workload identity: {h:?} is mounted inside a cgroup namespace; kernel-reported cgroup paths are not used for it");
        }
        let (learned, complete) = resolver.learn_existing(&named);
        if complete {
            log::info!("workload identity: {learned} existing cgroups learned");
        } else {
            log::warn!("workload identity: {learned} existing cgroups learned; a walk stopped at its bound");
        }
    }
    carriers.current = Some(settings.clone());
    if observers.is_empty() && pollers.is_empty() {
        return Err("no observer could start; nothing to observe (see the errors above)".into());
    }
    // Loading parsed the kernel's BTF (tens of MB of short-lived heap): give it back to the
    // system instead of keeping it as idle RSS on every node.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };

    let client_outbox = controller.as_ref().map(|setup| Arc::clone(&setup.outbox));
    let client_thread = match controller {
        Some(setup) => {
            sinks.push(Box::new(OutboxSink::new(Arc::clone(&setup.outbox))));
            let client = setup.into_client(&node, &report, Arc::clone(&counters), carriers);
            let thread = std::thread::Builder::new()
                .name("tapio-controller".into())
                .spawn(move || client.run())
                .map_err(|e| format!("spawning controller thread: {e}"))?;
            Some(thread)
        }
        None => None,
    };
    let sink_names: Vec<&'static str> = sinks.iter().map(|s| s.name()).collect();
    let clock = Arc::new(BootToWall::measured());
    let (tx, rx) = crate::queue::bounded(config.queue_capacity, crate::queue::QUEUE_MAX_BYTES);

    let sink_stage =
        SinkStage { queue: rx, sinks, identity, counters: Arc::clone(&counters), linger: crate::sink_stage::LINGER };
    let poll = PollThread {
        pollers,
        stamper: Stamper::new(Arc::from(node.as_str()), Arc::clone(&clock)),
        queue: tx.clone(),
        counters: Arc::clone(&counters),
        shutdown: Arc::clone(&shutdown),
    };
    let drain = Drain {
        observers,
        stamper: Stamper::new(Arc::from(node.as_str()), Arc::clone(&clock)),
        queue: tx,
        counters: Arc::clone(&counters),
        clock,
        shutdown: Arc::clone(&shutdown),
        // Without it the drain keeps its poll period (it could not be woken for shutdown).
        shutdown_waker: signal
            .waker()
            .map_err(|e| log::warn!("the drain keeps polling every 100 ms while idle: no shutdown waker: {e}"))
            .ok(),
        realtime: config.drain_realtime,
    };
    let sink_thread = std::thread::Builder::new()
        .name("tapio-sinks".into())
        .spawn(move || sink_stage.run())
        .map_err(|e| format!("spawning sink thread: {e}"))?;
    let drain_thread = std::thread::Builder::new()
        .name("tapio-drain".into())
        .spawn(move || drain.run())
        .map_err(|e| format!("spawning drain thread: {e}"))?;
    let poll_thread = std::thread::Builder::new()
        .name("tapio-poll".into())
        .spawn(move || poll.run())
        .map_err(|e| format!("spawning poll thread: {e}"))?;

    let status = StartupStatus { node: &node, observers: &report.details, sinks: &sink_names };
    match serde_json::to_string(&status) {
        Ok(json) => log::info!("status {json}"),
        Err(e) => log::error!("serializing the start-up status: {e}"),
    }
    let running: Vec<String> = report.observers.iter().map(|(n, s)| format!("{n}={}", s.label())).collect();
    log::info!("ready: node {node}, observers [{}], sinks [{}]", running.join(", "), sink_names.join(", "));

    // Idle, the main thread wakes only for its counters line (or a signal).
    let interval = Duration::from_secs(config.counters_log_interval_secs);
    let mut next_log = Instant::now() + interval;
    while !signal.wait(next_log.saturating_duration_since(Instant::now())) {
        if Instant::now() >= next_log {
            log_counters("counters", &counters);
            next_log = Instant::now() + interval;
        }
    }
    log::info!("shutting down: detaching, draining ring buffers and flushing sinks");
    // The poll thread sleeps until its next poll is due: wake it to see the flag.
    poll_thread.thread().unpark();
    join_within("drain thread", drain_thread, SHUTDOWN_DRAIN_JOIN);
    // The poll thread holds a sender of the sink queue: the sink stage ends after it does.
    join_within("poll thread", poll_thread, SHUTDOWN_POLL_JOIN);
    join_within("sink stage", sink_thread, SHUTDOWN_SINKS);
    // Only now is everything the sinks took in the outbox: let the client send it.
    if let Some(outbox) = &client_outbox {
        outbox.stop();
    }
    if let Some(t) = client_thread {
        join_within("controller link", t, SHUTDOWN_CONTROLLER_JOIN + crate::controller::client::SHUTDOWN_FLUSH);
    }
    // Close the books: every record handed to the sinks has an outcome. A sink that could
    // not finish in time (a blocked pipe, a stalled controller) gets what it still held, or
    // never received, counted as failed; a thread still stuck in a write dies with the
    // process.
    for name in sink_names {
        let left = counters.settle_sink(name);
        if left > 0 {
            log::warn!("shutdown: {left} records could not be written to sink {name} in time (counted as failed)");
        }
    }
    log_counters("counters final", &counters);
    Ok(())
}
