//! `tapio`: the command line for people and scripts. Evidence Profiles (validate, compile,
//! diff), the fleet's status from a controller, reading evidence files, and checking a node
//! for what the agent needs. Tables by default, `--json` for scripts.
//!
//! Exit status: 0 success; 1 a negative answer (an invalid profile, profiles that differ,
//! a node where the agent cannot run); 2 the command itself failed (bad arguments, a file
//! or controller that cannot be read).

mod doctor;
mod events;
mod help;
mod http;
mod profile;
mod status;
mod table;
mod time;

use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};

/// The command tree. clap's builder API rather than its derive, and help texts written out
/// in [`help`] rather than rendered by clap: the same parsing and error messages for far
/// less code (the CLI has a hard size budget, CLI_MAX_BYTES). The `.help()` strings below
/// document the arguments in the source; people see [`help`]'s texts.
fn cli() -> Command {
    let json = |help: &'static str| Arg::new("json").long("json").action(ArgAction::SetTrue).help(help);
    let profile_arg =
        |name: &'static str, help: &'static str| Arg::new(name).required(true).value_name("FILE").help(help);
    Command::new("tapio")
        .about("Tapio: Evidence Profiles, fleet status, evidence and node checks")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            Command::new("profile")
                .about("Validate, compile and compare Evidence Profiles (FILE.yaml, FILE.json, or builtin:NAME)")
                .subcommand_required(true)
                .arg_required_else_help(true)
                .subcommand(
                    Command::new("validate")
                        .about("Check a profile; exit 1 with the field's path and allowed range if it is invalid")
                        .arg(profile_arg("file", "Profile file (.yaml, .yml, .json) or builtin:NAME"))
                        .arg(json("JSON output")),
                )
                .subcommand(
                    Command::new("compile")
                        .about("Print the compiled config and its sha256 hash (what the controller would serve)")
                        .arg(profile_arg("file", "Profile file (.yaml, .yml, .json) or builtin:NAME"))
                        .arg(json("One JSON object: name, base, config_hash, config")),
                )
                .subcommand(
                    Command::new("diff")
                        .about("Field-level differences of two profiles' compiled configs; exit 1 if they differ")
                        .arg(profile_arg("a", "First profile (file or builtin:NAME)"))
                        .arg(profile_arg("b", "Second profile (file or builtin:NAME)"))
                        .arg(json("JSON output")),
                ),
        )
        .subcommand(
            Command::new("status")
                .about("Agents known to a controller: heartbeat ages, applied vs target config, loss counters")
                .arg(
                    Arg::new("controller")
                        .long("controller")
                        .required(true)
                        .value_name("URL")
                        .help("Controller base URL, e.g. http://tapio-controller:7470 (plain HTTP only)"),
                )
                .arg(json("Print the controller's status JSON (its pages merged into one document)"))
                .arg(
                    Arg::new("state")
                        .long("state")
                        .value_name("STATE")
                        .value_parser([
                            "registered",
                            "unregistered",
                            "stale",
                            "current",
                            "outdated",
                            "unreported",
                            "degraded",
                        ])
                        .help("Only agents in this state"),
                )
                .arg(
                    Arg::new("page-size")
                        .long("page-size")
                        .value_name("N")
                        .default_value("5000")
                        .help("Agents fetched per request (1..=5000)"),
                )
                .arg(
                    Arg::new("timeout-secs")
                        .long("timeout-secs")
                        .value_name("SECS")
                        .default_value("10")
                        .help("Connect and read timeout"),
                ),
        )
        .subcommand(
            Command::new("events")
                .about("Read evidence JSON lines (agent or controller output) as a table")
                .arg(
                    Arg::new("files")
                        .num_args(0..)
                        .value_name("FILE")
                        .help("Files of evidence JSON lines; `-` (or nothing) reads standard input"),
                )
                .arg(
                    Arg::new("follow")
                        .long("follow")
                        .short('f')
                        .action(ArgAction::SetTrue)
                        .help("Keep reading as the files grow (like tail -f; follows rotation). Ctrl-C stops"),
                )
                .arg(Arg::new("type").long("type").value_name("TYPE").action(ArgAction::Append).help(
                    "Only these types: kernel.network.connection_refused, a prefix such as kernel.network or network, … (repeatable)",
                ))
                .arg(
                    Arg::new("severity")
                        .long("severity")
                        .value_name("SEVERITY")
                        .help("Minimum severity: debug, info, warning, error, critical"),
                )
                .arg(Arg::new("since").long("since").value_name("TIME").help(
                    "Only events at or after this time: RFC 3339 (2026-11-21T06:00:00Z) or relative (90s, 10m, 2h, 1d)",
                ))
                .arg(
                    Arg::new("node")
                        .long("node")
                        .value_name("NODE")
                        .action(ArgAction::Append)
                        .help("Only events from this node (repeatable)"),
                )
                .arg(
                    Arg::new("namespace")
                        .long("namespace")
                        .short('n')
                        .value_name("NAMESPACE")
                        .action(ArgAction::Append)
                        .help("Only events of pods in this Kubernetes namespace (repeatable)"),
                )
                .arg(
                    Arg::new("pod")
                        .long("pod")
                        .value_name("POD")
                        .action(ArgAction::Append)
                        .help("Only events of this pod, by name or UID (repeatable)"),
                )
                .arg(
                    Arg::new("container")
                        .long("container")
                        .short('c')
                        .value_name("CONTAINER")
                        .action(ArgAction::Append)
                        .help("Only events of this container name (repeatable)"),
                )
                .arg(json("Print matching lines unchanged (JSON lines) instead of a table")),
        )
        .subcommand(
            Command::new("doctor")
                .about("Check this node for what the agent needs and say what will work")
                .arg(json("One JSON object instead of tables")),
        )
}

fn one(m: &ArgMatches, name: &str) -> String {
    m.get_one::<String>(name).cloned().unwrap_or_default()
}

fn many(m: &ArgMatches, name: &str) -> Vec<String> {
    m.get_many::<String>(name).map(|v| v.cloned().collect()).unwrap_or_default()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(text) = help::requested(&args) {
        out(text);
        return ExitCode::SUCCESS;
    }
    if matches!(args.get(1).map(String::as_str), Some("-V" | "--version")) {
        out(&format!("tapio {}\n", env!("CARGO_PKG_VERSION")));
        return ExitCode::SUCCESS;
    }
    let matches = match cli().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => {
            let path: Vec<&str> = args.iter().skip(1).map(String::as_str).take_while(|a| !a.starts_with('-')).collect();
            let usage =
                help::for_path(&path).lines().find(|l| l.starts_with("Usage:")).unwrap_or("Usage: tapio <COMMAND>");
            eprint!("{}", e.render());
            eprintln!("\n{usage}\nFor more information, try '--help'.");
            return ExitCode::from(2);
        }
    };
    let result = match matches.subcommand() {
        Some(("profile", m)) => match m.subcommand() {
            Some(("validate", m)) => profile::validate(&one(m, "file"), m.get_flag("json")),
            Some(("compile", m)) => profile::compile(&one(m, "file"), m.get_flag("json")),
            Some(("diff", m)) => profile::diff(&one(m, "a"), &one(m, "b"), m.get_flag("json")),
            _ => Err("usage: tapio profile validate|compile|diff".into()),
        },
        Some(("status", m)) => match (one(m, "timeout-secs").parse::<u64>(), one(m, "page-size").parse::<usize>()) {
            (Ok(t), Ok(page @ 1..=tapio_wire::status::STATUS_PAGE_MAX)) => status::run(
                &one(m, "controller"),
                m.get_flag("json"),
                t,
                m.get_one::<String>("state").map(String::as_str),
                page,
            ),
            (Err(_), _) => Err("--timeout-secs takes a whole number of seconds".into()),
            (_, _) => Err(format!("--page-size takes 1..={}", tapio_wire::status::STATUS_PAGE_MAX)),
        },
        Some(("events", m)) => events::run(events::Options {
            files: many(m, "files"),
            follow: m.get_flag("follow"),
            types: many(m, "type"),
            severity: m.get_one::<String>("severity").cloned(),
            since: m.get_one::<String>("since").cloned(),
            nodes: many(m, "node"),
            namespaces: many(m, "namespace"),
            pods: many(m, "pod"),
            containers: many(m, "container"),
            json: m.get_flag("json"),
        }),
        Some(("doctor", m)) => doctor::run(m.get_flag("json")),
        _ => Err("usage: tapio profile|status|events|doctor (see tapio --help)".into()),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tapio: {message}");
            ExitCode::from(2)
        }
    }
}

/// Writes `text` to stdout; a closed pipe (`tapio … | head`) ends quietly.
pub fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_err() {
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::{cli, help};

    #[test]
    fn the_command_tree_is_consistent() {
        cli().debug_assert();
    }

    /// Every flag the parser accepts is in its help text, and every flag a help text
    /// shows is accepted.
    #[test]
    fn help_texts_describe_exactly_the_parsers_flags() {
        fn walk(cmd: &clap::Command, path: &mut Vec<String>) {
            let words: Vec<&str> = path.iter().map(String::as_str).collect();
            let text = help::for_path(&words);
            let mut known: Vec<String> = vec!["--help".into()];
            if path.is_empty() {
                known.push("--version".into());
            }
            for arg in cmd.get_arguments() {
                if let Some(long) = arg.get_long() {
                    let flag = format!("--{long}");
                    assert!(text.contains(&flag), "help of {words:?} lacks {flag}");
                    known.push(flag);
                }
            }
            for word in text.split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == ',') {
                let word = word.trim_end_matches(['.', ':']);
                if word.starts_with("--") && word.len() > 2 && !word.contains('=') {
                    let flag = word.split('<').next().unwrap_or(word).to_string();
                    let described_elsewhere =
                        path.len() <= 1 && path.first().is_none_or(|p| p == "profile") && flag == "--json";
                    assert!(known.contains(&flag) || described_elsewhere, "help of {words:?} shows unknown {flag}");
                }
            }
            for sub in cmd.get_subcommands() {
                path.push(sub.get_name().to_string());
                assert_ne!(help::for_path(&path.iter().map(String::as_str).collect::<Vec<_>>()), help::TOP);
                walk(sub, path);
                path.pop();
            }
        }
        walk(&cli(), &mut Vec::new());
    }

    #[test]
    fn help_is_found_for_the_command_before_it() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(help::requested(&args("tapio events --json -h")), Some(help::EVENTS));
        assert_eq!(help::requested(&args("tapio profile diff --help")), Some(help::DIFF));
        assert_eq!(help::requested(&args("tapio help profile")), Some(help::PROFILE));
        assert_eq!(help::requested(&args("tapio --help")), Some(help::TOP));
        assert_eq!(help::requested(&args("tapio events -- --help")), None);
        assert_eq!(help::requested(&args("tapio doctor")), None);
    }
}
