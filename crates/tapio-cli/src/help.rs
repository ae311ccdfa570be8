//! Help texts, written out rather than generated: clap's help renderer would cost about
//! 60 KB of the binary's 900 KB budget. A test checks that every flag the parser knows is
//! described here, and that every flag described here is known to the parser.

/// `tapio --help`.
pub const TOP: &str = "\
tapio: Evidence Profiles, fleet status, evidence and node checks

Usage: tapio <COMMAND> [OPTIONS]

Commands:
  profile   Validate, compile and compare Evidence Profiles (FILE.yaml, FILE.json or builtin:NAME)
  status    Agents known to a controller: heartbeat ages, applied vs target config, loss counters
  events    Read evidence JSON lines (agent or controller output) as a table
  doctor    Check this node for what the agent needs and say what will work

Every command takes --help. Tables are for people; --json is for scripts.
Exit status: 0 success; 1 a negative answer (invalid profile, profiles differ, the agent
cannot run here); 2 the command failed (bad arguments, unreadable file or controller).

Options:
  -h, --help     Print help
  -V, --version  Print version
";

/// `tapio profile --help`.
pub const PROFILE: &str = "\
Validate, compile and compare Evidence Profiles

Usage: tapio profile <validate|compile|diff> ...

A PROFILE is a file (.yaml, .yml or .json, chosen by extension) or builtin:NAME
(builtin:production-default, builtin:quiet, builtin:sensitive).

Commands:
  validate PROFILE   Check it; exit 1 naming the field's path and its allowed values
  compile PROFILE    Print the compiled config and its sha256 config hash
  diff A B           Field-level differences of the compiled configs; exit 1 if any

Options:
      --json     Machine-readable output (each subcommand)
  -h, --help     Print help
";

/// `tapio profile validate --help`.
pub const VALIDATE: &str = "\
Check an Evidence Profile; exit 1 with the field's path and allowed range if it is invalid

Usage: tapio profile validate [--json] <PROFILE>

Arguments:
  <PROFILE>  Profile file (.yaml, .yml, .json) or builtin:NAME

Options:
      --json     {\"valid\", \"file\", \"name\", \"base\", \"overrides\", \"config_hash\"} or
                 {\"valid\": false, \"error\": {\"code\", \"path\", \"message\"}}
  -h, --help     Print help

A file that is not YAML or JSON is invalid too (code PARSE, exit 1); one that cannot
be read fails (exit 2).
";

/// `tapio profile compile --help`.
pub const COMPILE: &str = "\
Print the compiled config and its sha256 hash: what the controller serves for this profile

Usage: tapio profile compile [--json] <PROFILE>

Arguments:
  <PROFILE>  Profile file (.yaml, .yml, .json) or builtin:NAME

Options:
      --json     One JSON object: name, base, config_hash, config
  -h, --help     Print help
";

/// `tapio profile diff --help`.
pub const DIFF: &str = "\
Field-level differences of two profiles' compiled configs; exit 0 if none, 1 if any

Usage: tapio profile diff [--json] <A> <B>

Arguments:
  <A>  First profile (file or builtin:NAME)
  <B>  Second profile (file or builtin:NAME)

Options:
      --json     {\"a\", \"b\", \"differences\": [{\"field\", \"a\", \"b\"}]}
  -h, --help     Print help
";

/// `tapio status --help`.
pub const STATUS: &str = "\
Agents known to a controller: heartbeat ages, applied vs target config hash, loss counters

Usage: tapio status --controller <URL> [--state <STATE>] [--json] [--timeout-secs <SECS>]

Options:
      --controller <URL>     Controller base URL, e.g. http://tapio-controller:7470
                             (plain HTTP only: https:// is refused; redirects are not followed)
      --state <STATE>        Only agents in this state: registered, unregistered, stale,
                             current, outdated, unreported, degraded
      --page-size <N>        Agents fetched per request, 1..=5000 [default: 5000]
      --json                 Print the controller's /v1/status JSON (pages merged into one)
      --timeout-secs <SECS>  Connect and read timeout [default: 10]
  -h, --help                 Print help
";

/// `tapio events --help`.
pub const EVENTS: &str = "\
Read evidence JSON lines (agent stdout or file sink, controller sink) as a table

Usage: tapio events [OPTIONS] [FILE]...

Arguments:
  [FILE]...  Files of evidence JSON lines; - (or none) reads standard input

Options:
  -f, --follow           Keep reading as the files grow, following rotation; Ctrl-C stops
      --type <TYPE>      Only this type: kernel.network.connection_refused, or a prefix such as
                         kernel.network or network (repeatable)
      --severity <SEV>   Minimum severity: debug, info, warning, error, critical
      --since <TIME>     Only events at or after: RFC 3339 (2026-11-21T06:00:00Z) or relative
                         (90s, 10m, 2h, 1d)
      --node <NODE>      Only events from this node (repeatable)
  -n, --namespace <NS>   Only events of pods in this Kubernetes namespace (repeatable)
      --pod <POD>        Only events of this pod, by name or UID (repeatable)
  -c, --container <C>    Only events of this container name (repeatable)
      --json             Print matching lines unchanged instead of a table
  -h, --help             Print help

Lines that are not evidence records are skipped and counted; the count and the first one's
place are reported on stderr at the end, with the numbers shown and filtered out.
The WORKLOAD column is namespace/pod/container when the controller named the pod (its
`k8s` names), else what the node knows (container id, pod UID or cgroup path).
Namespace, pod name and container filters match only records the controller named.
Colour is used only when stdout is a terminal (and NO_COLOR is not set).
";

/// `tapio doctor --help`.
pub const DOCTOR: &str = "\
Check this node for what the agent needs and say what will and will not work

Usage: tapio doctor [--json]

Checks: kernel version, BTF, tracefs, bpffs, capabilities (of this process: run it with the
agent's privileges), cgroup layout and the memory controller, hardware PMU, PSI files.
Exit status 1 when the agent cannot run at all here.

Options:
      --json     One JSON object: agent_can_run, checks, observers
  -h, --help     Print help
";

/// The help text for a command path (`[]`, `["profile"]`, `["profile", "diff"]`, …).
pub fn for_path(path: &[&str]) -> &'static str {
    match path {
        ["profile", "validate", ..] => VALIDATE,
        ["profile", "compile", ..] => COMPILE,
        ["profile", "diff", ..] => DIFF,
        ["profile", ..] => PROFILE,
        ["status", ..] => STATUS,
        ["events", ..] => EVENTS,
        ["doctor", ..] => DOCTOR,
        _ => TOP,
    }
}

/// If the arguments ask for help (`-h`/`--help` before any `--`, or `tapio help …`), the
/// help for the subcommand named before it.
pub fn requested(args: &[String]) -> Option<&'static str> {
    let words: Vec<&str> = args.iter().skip(1).map(String::as_str).take_while(|a| *a != "--").collect();
    if words.first() == Some(&"help") {
        return Some(for_path(&words[1..]));
    }
    let at = words.iter().position(|a| *a == "-h" || *a == "--help")?;
    let path: Vec<&str> = words[..at].iter().copied().filter(|w| !w.starts_with('-')).collect();
    Some(for_path(&path))
}
