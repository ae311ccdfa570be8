//! Command-line arguments (lexopt: a tiny, strict parser fitting the agent's size budget).

use std::path::PathBuf;

pub const USAGE: &str = "\
tapio-agent: emits structured kernel evidence from eBPF observers

USAGE: tapio-agent [OPTIONS]

OPTIONS:
  --config FILE     strict TOML config (unknown keys and out-of-range values are errors)
  --node NAME       node name stamped on evidence (default: config, $NODE_NAME, hostname)
  --file PATH       also write evidence as JSON lines to PATH (rotated by size; this
                    path replaces [sinks.file] path, whose rotation settings apply)
  --no-stdout       do not write evidence to standard output
  --check-config    validate the config and exit
  -h, --help        print this help
  -V, --version     print the version

Logs and loss counters go to standard error; TAPIO_LOG=debug|info|warn|error sets the level.";

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub config: Option<PathBuf>,
    pub node: Option<String>,
    pub file: Option<PathBuf>,
    pub no_stdout: bool,
    pub check_config: bool,
    pub help: bool,
    pub version: bool,
}

pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut out = Args::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") => out.config = Some(parser.value()?.into()),
            Long("node") => out.node = Some(parser.value()?.string()?),
            Long("file") => out.file = Some(parser.value()?.into()),
            Long("no-stdout") => out.no_stdout = true,
            Long("check-config") => out.check_config = true,
            Short('h') | Long("help") => out.help = true,
            Short('V') | Long("version") => out.version = true,
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Args, lexopt::Error> {
        parse(args.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn parses_every_option() {
        let a = p(&["--config", "/etc/t.toml", "--node", "n1", "--file", "/tmp/e", "--no-stdout", "--check-config"])
            .unwrap();
        assert_eq!(a.config.as_deref(), Some(std::path::Path::new("/etc/t.toml")));
        assert_eq!(a.node.as_deref(), Some("n1"));
        assert!(a.no_stdout && a.check_config);
    }

    #[test]
    fn rejects_unknown_options_and_missing_values() {
        assert!(p(&["--bogus"]).unwrap_err().to_string().contains("--bogus"));
        assert!(p(&["--config"]).is_err());
    }
}
