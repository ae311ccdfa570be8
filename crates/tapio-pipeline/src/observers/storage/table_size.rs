//! The in-flight table's size for this node, from the block request structs its disks have
//! (sysfs), chosen once at load.
//!
//! A request struct keeps its slot between requests (see storage.bpf.c), so the table never
//! runs full while it holds every struct the node's disks have. Those are known: each hardware queue has a struct per tag (`mq/<n>/nr_tags`,
//! `nr_reserved_tags`) and one for flushes, and a disk with an I/O scheduler one per
//! scheduler tag (`queue/nr_requests`, per hardware queue). A table no larger than that
//! keeps the hooks' cache and TLB footprint small: on the bench's VM a 4,096-entry table
//! measured about 10–25 ns less per block hook than the 16,384 entries every node got before
//! (crates/tapio-bench/README.md, fifteenth round, when the table was a hash map). Disks added later, or a scheduler
//! switched on, can bring more structs than that: room for twice the structs at load covers
//! most of it, and past it the table switches to its full-table mode (correct, slower).

use std::path::Path;

/// The smallest table: once a table has run full it holds only requests in flight, and a
/// node with few disks may still have thousands of those at once. (A power of two, as every
/// size here: the programs index the table by a hash masked to its size.)
pub const MIN_INFLIGHT_ENTRIES: u32 = 4096;

/// Entries for a node whose disks have `structs` request structs: room for twice as many,
/// a power of two (the kernel's bucket count is one anyway), within
/// [`MIN_INFLIGHT_ENTRIES`] and `max` (the object's declared size, which the budgets hold).
pub fn inflight_entries(structs: u64, max: u32) -> u32 {
    let wanted = structs.saturating_mul(2).checked_next_power_of_two().unwrap_or(u64::MAX);
    u32::try_from(wanted).unwrap_or(u32::MAX).clamp(MIN_INFLIGHT_ENTRIES.min(max), max)
}

/// The block request structs of the disks under `sys_block` (`/sys/block`), counting no
/// further than `enough`; None when the directory cannot be read (the caller then takes the
/// largest table, as if the node were large).
pub fn request_structs(sys_block: &Path, enough: u64) -> Option<u64> {
    let disks = std::fs::read_dir(sys_block).ok()?;
    let mut total = 0u64;
    for disk in disks.flatten() {
        if total >= enough {
            break;
        }
        total = total.saturating_add(disk_request_structs(&disk.path()));
    }
    Some(total)
}

/// One disk's structs; 0 for a disk that does not use blk-mq requests (zram, device-mapper
/// and md volumes are bio-based: their requests are the underlying disks').
fn disk_request_structs(disk: &Path) -> u64 {
    let Ok(queues) = std::fs::read_dir(disk.join("mq")) else { return 0 };
    let mut hardware_queues = 0u64;
    let mut structs = 0u64;
    for queue in queues.flatten() {
        let queue = queue.path();
        let Some(tags) = read_number(&queue.join("nr_tags")) else { continue };
        let reserved = read_number(&queue.join("nr_reserved_tags")).unwrap_or(0);
        hardware_queues += 1;
        // The tags' structs and the queue's flush request.
        structs = structs.saturating_add(tags).saturating_add(reserved).saturating_add(1);
    }
    if has_scheduler(disk) {
        let depth = read_number(&disk.join("queue/nr_requests")).unwrap_or(0);
        structs = structs.saturating_add(hardware_queues.saturating_mul(depth));
    }
    structs
}

/// Whether an I/O scheduler is selected (`queue/scheduler` brackets the one in use).
fn has_scheduler(disk: &Path) -> bool {
    read_short(&disk.join("queue/scheduler"))
        .is_some_and(|text| text.split_whitespace().any(|s| s.starts_with('[') && s != "[none]"))
}

fn read_number(path: &Path) -> Option<u64> {
    read_short(path)?.trim().parse().ok()
}

/// A sysfs attribute's text (the kernel hands out at most a page of one); None when
/// unreadable.
fn read_short(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use tapio_util::test_dirs::scratch;

    fn disk(root: &Path, name: &str, queues: &[(u64, u64)], scheduler: &str, nr_requests: u64) {
        let d = root.join(name);
        fs::create_dir_all(d.join("queue")).unwrap();
        fs::write(d.join("queue/scheduler"), format!("{scheduler}\n")).unwrap();
        fs::write(d.join("queue/nr_requests"), format!("{nr_requests}\n")).unwrap();
        for (i, (tags, reserved)) in queues.iter().enumerate() {
            let q = d.join(format!("mq/{i}"));
            fs::create_dir_all(&q).unwrap();
            fs::write(q.join("nr_tags"), format!("{tags}\n")).unwrap();
            fs::write(q.join("nr_reserved_tags"), format!("{reserved}\n")).unwrap();
        }
    }

    #[test]
    fn structs_are_tags_flushes_and_scheduler_tags_per_hardware_queue() {
        let root = scratch("table-size-count");
        // No scheduler: 2 queues of 1,023 tags and one reserved, a flush request each.
        disk(&root, "nvme0n1", &[(1023, 1), (1023, 1)], "[none] mq-deadline kyber", 1023);
        // A scheduler: its 256 tags per queue come on top of the 128 driver tags.
        disk(&root, "vda", &[(128, 0)], "none [mq-deadline] kyber", 256);
        // Bio-based: no mq directory.
        fs::create_dir_all(root.join("dm-0/queue")).unwrap();
        fs::write(root.join("dm-0/queue/scheduler"), "none\n").unwrap();
        assert_eq!(request_structs(&root, u64::MAX), Some(2 * (1023 + 1 + 1) + (128 + 1 + 256)));
        // Counting stops once enough is known.
        assert!(request_structs(&root, 1).is_some_and(|n| n < 2 * (1023 + 1 + 1) + (128 + 1 + 256)));
        assert_eq!(request_structs(&root.join("missing"), u64::MAX), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_queue_without_a_readable_tag_count_is_not_counted() {
        let root = scratch("table-size-unreadable");
        disk(&root, "sda", &[(64, 0), (64, 0)], "none [mq-deadline]", 64);
        fs::write(root.join("sda/mq/1/nr_tags"), "many\n").unwrap();
        // One queue left: its tags, its flush, and the scheduler's tags for it.
        assert_eq!(request_structs(&root, u64::MAX), Some(64 + 1 + 64));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_table_holds_twice_the_structs_within_its_bounds() {
        assert_eq!(inflight_entries(0, 16384), MIN_INFLIGHT_ENTRIES);
        assert_eq!(inflight_entries(1408, 16384), 4096);
        assert_eq!(inflight_entries(2049, 16384), 8192);
        assert_eq!(inflight_entries(4096, 16384), 8192);
        assert_eq!(inflight_entries(4097, 16384), 16384);
        assert_eq!(inflight_entries(70_000, 16384), 16384);
        assert_eq!(inflight_entries(u64::MAX, 16384), 16384);
        // A declared size under the minimum is never exceeded.
        assert_eq!(inflight_entries(0, 1024), 1024);
    }
}
