//! Container observer (userspace half): the hooks it attaches and its classifier.

pub mod classify;

use super::{Classifier, Hook};
use crate::stamp::{Stamper, Verdict};
use classify::PageSize;

pub const NAME: &str = "container";

/// How the kernel's `oom:mark_victim` becomes oom_kill evidence on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomHook {
    /// `tp_btf/mark_victim`: the tracepoint passes the victim's task (mainline 6.9+, and
    /// stable kernels that took that change, e.g. Debian's 5.10.262 and 6.1.192).
    Typed,
    /// `tracepoint/oom/mark_victim` (a pid only, older kernels), with the victim's task
    /// noted by `tp_btf/signal_generate` when the OOM killer sends it SIGKILL.
    Pid,
}

/// Overrides the automatic choice: `auto` (default), `typed` or `pid`. For an operator whose
/// vendor kernel is detected wrongly, and for the kernel matrix, which runs the pid path on
/// kernels that would otherwise take the typed one.
pub const OOM_HOOK_ENV: &str = "TAPIO_OOM_HOOK";

const MARK_VICTIM_FORMATS: [&str; 2] =
    ["/sys/kernel/tracing/events/oom/mark_victim/format", "/sys/kernel/debug/tracing/events/oom/mark_victim/format"];

/// The change that gave mark_victim the task also gave its event these size fields, so the
/// event's format says which prototype the kernel has (the same test the typed program
/// makes with CO-RE, `trace_event_raw_mark_victim.anon_rss`).
fn typed_from_format(format: &str) -> bool {
    format.lines().any(|l| l.trim_start().starts_with("field:") && l.contains(" anon_rss;"))
}

fn detect() -> Result<OomHook, String> {
    let format = MARK_VICTIM_FORMATS
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .ok_or("the oom:mark_victim tracepoint's format is not readable (tracefs)")?;
    Ok(if typed_from_format(&format) { OomHook::Typed } else { OomHook::Pid })
}

/// The OOM hook for this kernel, logged with the reason.
pub fn oom_hook() -> OomHook {
    let forced = match std::env::var(OOM_HOOK_ENV).as_deref() {
        Ok("typed") => Some(OomHook::Typed),
        Ok("pid") => Some(OomHook::Pid),
        Ok("auto") | Ok("") | Err(_) => None,
        Ok(other) => {
            log::warn!("{OOM_HOOK_ENV}={other} is not auto, typed or pid: choosing automatically");
            None
        }
    };
    let (hook, why) = match (forced, detect()) {
        (Some(hook), _) => (hook, format!("forced by {OOM_HOOK_ENV}")),
        (None, Ok(OomHook::Typed)) => (OomHook::Typed, "this kernel's mark_victim passes the victim's task".into()),
        (None, Ok(OomHook::Pid)) => (OomHook::Pid, "this kernel's mark_victim passes only a pid".into()),
        // The typed program checks the same thing itself and counts unsupported_kernel.
        (None, Err(e)) => (OomHook::Typed, format!("{e}; trying the typed hook")),
    };
    let via = match hook {
        OomHook::Typed => "tp_btf/mark_victim",
        OomHook::Pid => "tracepoint/oom/mark_victim with tp_btf/signal_generate",
    };
    log::info!("observer {NAME}: OOM kills via {via} ({why})");
    hook
}

pub fn hooks() -> Vec<(&'static str, Hook)> {
    hooks_for(oom_hook())
}

/// The programs to attach with `oom` as the OOM hook: the typed OOM program or its pid-only
/// replacement, never both (one kill would be two events).
pub fn hooks_for(oom: OomHook) -> Vec<(&'static str, Hook)> {
    use tapio_bpf::container::{BTF_TRACEPOINTS, PID_OOM_TRACEPOINT, TRACEPOINTS, TYPED_OOM_PROGRAM};
    let classic = TRACEPOINTS.iter().map(|&(prog, cat, tp)| (prog, Hook::TracePoint(cat, tp)));
    let typed = BTF_TRACEPOINTS
        .iter()
        .filter(|&&(prog, _)| oom == OomHook::Typed || prog != TYPED_OOM_PROGRAM)
        .map(|&(prog, tp)| (prog, Hook::BtfTracePoint(tp)));
    let (prog, cat, tp) = PID_OOM_TRACEPOINT;
    let pid = (oom == OomHook::Pid).then_some((prog, Hook::TracePoint(cat, tp)));
    classic.chain(typed).chain(pid).collect()
}

pub struct ContainerClassifier {
    pages: PageSize,
}

impl ContainerClassifier {
    pub fn new() -> Self {
        Self { pages: PageSize::of_this_system() }
    }
}

impl Default for ContainerClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Classifier for ContainerClassifier {
    fn classify(&mut self, record: &[u8], stamper: &mut Stamper) -> Result<Verdict, tapio_bpf::DecodeError> {
        let rec = tapio_bpf::container::decode(record)?;
        Ok(classify::classify(&rec, &self.pages, stamper))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn programs(oom: OomHook) -> Vec<&'static str> {
        hooks_for(oom).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn one_oom_program_per_kernel_and_the_signal_note_for_both() {
        let typed = programs(OomHook::Typed);
        assert!(typed.contains(&"tapio_mark_victim") && !typed.contains(&"tapio_mark_victim_pid"), "{typed:?}");
        let pid = programs(OomHook::Pid);
        assert!(pid.contains(&"tapio_mark_victim_pid") && !pid.contains(&"tapio_mark_victim"), "{pid:?}");
        for p in [&typed, &pid] {
            assert!(p.contains(&"tapio_signal_generate") && p.contains(&"tapio_sched_process_exit"), "{p:?}");
        }
    }

    #[test]
    fn the_event_format_tells_the_prototype() {
        // Shapes as the kernels print them (5.10.262 with the change, an older one without).
        let with_task = "name: mark_victim\nformat:\n\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\
                         \tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;\n";
        let pid_only = "name: mark_victim\nformat:\n\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\n\
                        print fmt: \"pid=%d\", REC->pid\n";
        assert!(typed_from_format(with_task));
        assert!(!typed_from_format(pid_only));
    }
}
