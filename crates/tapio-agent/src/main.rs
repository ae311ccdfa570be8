//! tapio-agent: the node-local observer. See the README for what it emits and why.

use tapio_agent::{cli, config, logger, runtime};

use std::process::ExitCode;

fn main() -> ExitCode {
    // Allocations of 128 KiB and more (the queue's ring, BTF parsing) get their own mappings,
    // always: glibc otherwise raises this threshold after the first large free, and from then
    // on grows the queue inside the heap, where growing copies it and holds old and new at
    // once (a slow consumer's peak RSS went 1 MB over its goal in some runs), and freed room
    // is not given back to the system.
    // SAFETY: mallopt only changes allocator parameters; no memory is touched.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    logger::init();
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("tapio-agent: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    if args.help {
        println!("{}", cli::USAGE);
        return ExitCode::SUCCESS;
    }
    if args.version {
        println!("tapio-agent {} (kernel ABI v{})", env!("CARGO_PKG_VERSION"), tapio_bpf::ABI_VERSION);
        return ExitCode::SUCCESS;
    }
    let mut config = match &args.config {
        Some(path) => match config::AgentConfig::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tapio-agent: invalid config: {e}");
                return ExitCode::from(2);
            }
        },
        None => config::AgentConfig::default(),
    };
    if let Some(path) = args.file {
        config.write_file_to(path);
    }
    if args.no_stdout {
        config.sinks.stdout = false;
    }
    // Checked with the file's own node_name: a blank or overlong name, which the
    // controller refuses on every request, fails here, at start.
    if let Some(node) = args.node {
        config.node_name = Some(node);
    }
    if let Err(e) = config.validate() {
        eprintln!("tapio-agent: invalid config: {e}");
        return ExitCode::from(2);
    }
    if args.check_config {
        println!("config ok");
        return ExitCode::SUCCESS;
    }
    let node = runtime::node_name(config.node_name.as_deref());
    let code = match runtime::run(config, node) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    };
    logger::finish();
    code
}
