//! How many runs of a loaded program the kernel skipped because that program was already
//! running on the same CPU (`bpf_prog_info.recursion_misses`, Linux 5.12+: a hook that fired
//! again in an interrupt or softirq while its program ran). aya 0.14's `ProgramInfo` does
//! not expose the field, so this asks the kernel for it directly.

use aya_obj::generated::{bpf_cmd, bpf_prog_info};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd};

/// The `info` member of `union bpf_attr` (BPF_OBJ_GET_INFO_BY_FD). The kernel reads only the
/// attr's first `size` bytes and takes the rest as zero.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    /// In: the room at `info`; out: how much of it the kernel filled.
    info_len: u32,
    info: u64,
}

/// The prefix of `bpf_prog_info` a kernel must fill for `recursion_misses` to be its value
/// (older kernels fill a shorter struct).
const FILLED_WITH_MISSES: usize = offset_of!(bpf_prog_info, recursion_misses) + size_of::<u64>();

/// The recursion misses of the program behind `program`; `None` when the kernel does not
/// report them (before 5.12) or refuses the request.
pub fn of_program(program: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: `bpf_prog_info` is integers and byte arrays, for which all-zero is a value;
    // its zero counts and pointers ask the kernel for no arrays.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: FILLED_WITH_MISSES as u32,
        info: std::ptr::addr_of_mut!(info) as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes at `info` (a live local of at least
    // that size) and the filled length into `attr`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_int,
            std::ptr::addr_of_mut!(attr),
            size_of::<InfoByFd>(),
        )
    };
    if rc != 0 {
        return None;
    }
    reported(&info, attr.info_len)
}

/// `info.recursion_misses` if the kernel filled `filled` bytes of `info` including it.
fn reported(info: &bpf_prog_info, filled: u32) -> Option<u64> {
    (filled as usize >= FILLED_WITH_MISSES).then_some(info.recursion_misses)
}

/// The sum over `programs` of the recursion misses the kernel reports; `None` when it
/// reports them for none (a count of zero would claim that no run was skipped).
pub fn summed(programs: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    programs.into_iter().flatten().reduce(u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_with_misses(misses: u64) -> bpf_prog_info {
        // SAFETY: as in `of_program`, all-zero is a value of this struct.
        let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
        info.recursion_misses = misses;
        info
    }

    #[test]
    fn a_kernel_that_filled_less_than_the_field_does_not_report_it() {
        let info = info_with_misses(7);
        assert_eq!(reported(&info, FILLED_WITH_MISSES as u32), Some(7));
        assert_eq!(reported(&info, size_of::<bpf_prog_info>() as u32), Some(7));
        // 5.10's struct ends before the field (at run_cnt): its zero is no count.
        let before = offset_of!(bpf_prog_info, recursion_misses) as u32;
        assert_eq!(reported(&info, before), None);
        assert_eq!(reported(&info, FILLED_WITH_MISSES as u32 - 1), None);
    }

    #[test]
    fn sums_what_is_reported_and_reports_nothing_when_no_program_does() {
        assert_eq!(summed([Some(2), None, Some(5)]), Some(7));
        assert_eq!(summed([Some(0), Some(0)]), Some(0));
        assert_eq!(summed([None, None]), None);
        assert_eq!(summed([]), None);
        assert_eq!(summed([Some(u64::MAX), Some(1)]), Some(u64::MAX));
    }

    #[test]
    fn a_descriptor_that_is_not_a_program_reports_nothing() {
        let file = std::fs::File::open("/dev/null").expect("open /dev/null");
        assert_eq!(of_program(std::os::fd::AsFd::as_fd(&file)), None);
    }
}
