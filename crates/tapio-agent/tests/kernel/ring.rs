//! The agent's ring reader (`src/ring.rs`) against a real ring-buffer map: what it keeps
//! resident. Its reading is exercised by every other kernel test, whose records all pass
//! through it.

use crate::support::kernel_test;
use aya::maps::MapData;
use tapio_agent::ring::Ring;

/// The process's mappings of BPF maps, from `/proc/self/smaps`: (start address, size and
/// resident KiB).
fn map_mappings() -> Vec<(String, u64, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
    let mut found = Vec::new();
    let mut current: Option<(String, u64)> = None;
    let kib = |line: &str, key: &str| -> Option<u64> {
        line.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse().ok()
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(range), Some(_perms)) = (fields.next(), fields.next()) {
            if range.contains('-') && range.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                current = line.ends_with("anon_inode:bpf-map").then(|| (range.to_string(), 0));
                continue;
            }
        }
        if let Some((range, size)) = current.as_mut() {
            if let Some(v) = kib(line, "Size:") {
                *size = v;
            } else if let Some(rss) = kib(line, "Rss:") {
                found.push((range.clone(), *size, rss));
            }
        }
    }
    found
}

#[test]
#[ignore = "needs root"]
fn a_mapped_ring_is_resident_once_not_twice() {
    let _turn = kernel_test("ring_mapping");
    const RING_BYTES: u32 = 4 << 20;
    let definition = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
        0,
        0,
        RING_BYTES,
        0,
    );
    let map = MapData::create(definition, "ring_rss_test", None).expect("create a ring buffer map");
    let before = map_mappings();
    let ring = Ring::new(map, RING_BYTES).expect("map the ring");
    let with_ring = map_mappings();
    drop(ring);
    let after = map_mappings();
    let added: Vec<_> = with_ring.iter().filter(|m| !before.contains(m)).collect();
    let data_kib = u64::from(RING_BYTES) / 1024;
    // The consumer's page, then the producer's page with one copy of the data: mapped as the
    // kernel offers it, the data would be there twice.
    let sizes: Vec<u64> = added.iter().map(|m| m.1).collect();
    let page_kib = added.iter().map(|m| m.1).min().unwrap_or(0);
    assert_eq!(sizes.len(), 2, "two mappings for one ring: {added:?}");
    assert!(sizes.contains(&(page_kib + data_kib)), "the data mapped once: {added:?}");
    assert!(added.iter().all(|m| m.2 == m.1), "the kernel maps a ring's pages when it is mapped: {added:?}");
    let resident: u64 = added.iter().map(|m| m.2).sum();
    assert_eq!(resident, 2 * page_kib + data_kib, "resident once: {added:?}");
    assert!(after.iter().all(|m| !added.contains(&m)), "unmapped with the ring: {after:?}");
}
