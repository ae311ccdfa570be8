//! The kernel's CPU lists (`/sys/devices/system/cpu/possible`): how many per-CPU slots a
//! map indexed by CPU id needs.

/// Where the kernel lists the CPUs it may ever bring online.
pub const POSSIBLE: &str = "/sys/devices/system/cpu/possible";

/// "0-3,5,7-8" (the kernel's CPU list format) → [0, 1, 2, 3, 5, 7, 8]; `None` if malformed
/// or implausibly large (a range over 4,096 CPUs, a list over 8,192).
pub fn parse_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let a = part.parse::<u32>().ok()?;
                (a, a)
            }
        };
        if b < a || b - a > 4096 || cpus.len() > 8192 {
            return None;
        }
        cpus.extend(a..=b);
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// Slots a per-CPU array needs for a CPU list such as `0-3,8-11`: the highest id plus one
/// (a list may have gaps, and a CPU's id is its slot). `None` for a list that is not one.
pub fn slots_for_list(list: &str) -> Option<u32> {
    parse_list(list)?.into_iter().max()?.checked_add(1)
}

/// Slots for every possible CPU of this machine (see [`slots_for_list`]).
pub fn possible_slots() -> Result<u32, String> {
    let list = std::fs::read_to_string(POSSIBLE).map_err(|e| format!("reading {POSSIBLE}: {e}"))?;
    slots_for_list(&list).ok_or_else(|| format!("{POSSIBLE} is not a CPU list: {:?}", list.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_cpu_list_format() {
        assert_eq!(parse_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_list("0,2-3,7"), Some(vec![0, 2, 3, 7]));
        assert_eq!(parse_list(""), None);
        assert_eq!(parse_list("3-1"), None);
        assert_eq!(parse_list("a"), None);
        assert_eq!(parse_list("0-100000"), None, "implausibly large");
    }

    #[test]
    fn a_list_needs_its_highest_id_plus_one_slots() {
        assert_eq!(slots_for_list("0\n"), Some(1));
        assert_eq!(slots_for_list("0-1\n"), Some(2));
        assert_eq!(slots_for_list("0-3,8-11"), Some(12), "gaps keep their slots");
        assert_eq!(slots_for_list("0,2,5"), Some(6));
        for bad in ["", "x", "3-1", "0-", "-1"] {
            assert_eq!(slots_for_list(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn this_machine_has_at_least_the_cpus_it_runs_on() {
        let online = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        assert!(possible_slots().unwrap() >= online);
    }
}
