//! Binary sizes: the agent against its budget (as shipped, and as the plain release
//! profile builds it), the controller for the record.

use crate::report::{thousands, Report, Verdict};
use std::path::Path;

/// The agent's size goal, in bytes (both profiles strip symbols).
pub const AGENT_GOAL_BYTES: u64 = 1_000_000;

/// Reports the shipped agent (`agent`), the release-profile agent (`release_agent`, skipped
/// when it is the same file) and the controller if it was built.
pub fn measure(agent: &Path, release_agent: &Path, controller: &Path, report: &mut Report) {
    let goal = format!("<= {} B", thousands(AGENT_GOAL_BYTES));
    let mut binaries = vec![(format!("tapio-agent ({})", profile_of(agent)), agent)];
    if release_agent != agent {
        binaries.push(("tapio-agent (release profile)".to_string(), release_agent));
    }
    for (label, path) in binaries {
        match std::fs::metadata(path) {
            Ok(m) => report.row(
                "size",
                label,
                format!("{} B", thousands(m.len())),
                goal.clone(),
                Verdict::check(m.len() <= AGENT_GOAL_BYTES),
            ),
            Err(e) => {
                report.not_measured("size", &label, &goal, format!("{}: {e} (scripts/bench builds it)", path.display()))
            }
        }
    }
    match std::fs::metadata(controller) {
        Ok(m) => report.row(
            "size",
            "tapio-controller (release profile)",
            format!("{} B", thousands(m.len())),
            "(no goal)",
            Verdict::Info,
        ),
        Err(_) => {
            report.note(format!("tapio-controller: no release binary at {}; size not reported", controller.display()))
        }
    }
}

/// "agent profile, as shipped" for target/agent/…, "release profile" for target/release/….
fn profile_of(binary: &Path) -> String {
    match binary.parent().and_then(|d| d.file_name()).and_then(|n| n.to_str()) {
        Some("agent") => "agent profile: release + panic=abort, as shipped".into(),
        Some("release") => "release profile".into(),
        _ => binary.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_profile_from_the_target_directory() {
        assert!(profile_of(Path::new("/w/target/agent/tapio-agent")).starts_with("agent profile"));
        assert_eq!(profile_of(Path::new("/w/target/release/tapio-agent")), "release profile");
        assert_eq!(profile_of(Path::new("/opt/tapio-agent")), "/opt/tapio-agent");
    }
}
