//! The eBPF object and map budgets (checked by `scripts/verify-lean`): each embedded
//! object's size, each map's declared memory (max_entries × (key + value); a ring buffer's
//! size; per-CPU maps once per possible CPU of this machine) and the total the agent asks
//! the kernel to lock, each against the budget the README documents ("Budgets").
//!
//! The figures are read from the objects the agent embeds (parsed with aya-obj, the parser
//! aya itself loads them with), so a map resized in C is checked without anyone updating a
//! list. The kernel adds its own per-element overhead to hash maps; the budget is on what
//! Tapio declares.

use crate::report::{thousands, Report, Verdict};

/// Budget for each embedded object (ELF with BTF, DWARF stripped), in bytes.
pub const OBJECT_BUDGET_BYTES: u64 = 96 * 1024;
/// Budget for each map, in bytes.
pub const MAP_BUDGET_BYTES: u64 = 2 * 1024 * 1024;
/// Budget for the sum over every map of every object, in bytes: 5,626,444 B measured on 2
/// CPUs for the first three observers after their rings were halved, plus the DNS
/// observer's query table, owners and 64 KiB ring (~1.58 MB).
pub const TOTAL_BUDGET_BYTES: u64 = 7 * 1024 * 1024;

const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// One map's declared memory.
#[derive(Debug, PartialEq, Eq)]
pub struct MapMemory {
    pub name: String,
    pub bytes: u64,
    /// How the figure was made, for the table.
    pub how: String,
}

/// A map's declared bytes: a ring buffer is its size; every other map is max_entries ×
/// (key + value), once per possible CPU for per-CPU maps.
pub fn map_bytes(map_type: u32, max_entries: u32, key: u32, value: u32, cpus: u64) -> (u64, String) {
    let entries = u64::from(max_entries);
    if map_type == BPF_MAP_TYPE_RINGBUF {
        return (entries, format!("ring of {} B", thousands(entries)));
    }
    let per_copy = entries * (u64::from(key) + u64::from(value));
    let per_cpu =
        matches!(map_type, BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_PERCPU_ARRAY | BPF_MAP_TYPE_LRU_PERCPU_HASH);
    if per_cpu {
        (per_copy * cpus, format!("{} x ({key} + {value}) x {cpus} CPUs", thousands(entries)))
    } else {
        (per_copy, format!("{} x ({key} + {value})", thousands(entries)))
    }
}

/// An array of per-CPU rings sharing `total_bytes` (`TAPIO_EVENT_RINGS_PER_CPU`): the rings the
/// agent creates for `cpus` CPUs (`tapio_bpf::per_cpu_ring_bytes`, 4 KiB pages).
pub fn per_cpu_rings_bytes(total_bytes: u32, cpus: u64) -> (u64, String) {
    let each = tapio_bpf::per_cpu_ring_bytes(total_bytes, u32::try_from(cpus).unwrap_or(u32::MAX), 4096);
    (u64::from(each) * cpus, format!("{cpus} per-CPU rings of {} B", thousands(u64::from(each))))
}

/// The maps of one object, by name.
pub fn maps_of(object: &[u8], cpus: u64) -> Result<Vec<MapMemory>, String> {
    let parsed = aya_obj::Object::parse(object).map_err(|e| format!("parsing the object: {e}"))?;
    let mut maps: Vec<MapMemory> = parsed
        .maps
        .iter()
        .map(|(name, m)| {
            let per_cpu_rings = m
                .inner()
                .filter(|inner| m.map_type() == BPF_MAP_TYPE_ARRAY_OF_MAPS && inner.map_type() == BPF_MAP_TYPE_RINGBUF);
            let (bytes, how) = match per_cpu_rings {
                // The agent makes one ring per possible CPU, each its share of the template's size.
                Some(template) => per_cpu_rings_bytes(template.max_entries(), cpus),
                None => map_bytes(m.map_type(), m.max_entries(), m.key_size(), m.value_size(), cpus),
            };
            MapMemory { name: name.clone(), bytes, how }
        })
        .collect();
    maps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(maps)
}

/// Possible CPUs of this machine (what per-CPU maps are allocated for).
fn possible_cpus() -> u64 {
    tapio_util::cpus::possible_slots()
        .map(u64::from)
        .unwrap_or_else(|_| std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1))
}

pub fn measure(report: &mut Report) {
    let cpus = possible_cpus();
    // Every object the agent embeds: the kernel halves of its observer registry.
    let objects =
        tapio_agent::observers::REGISTRY.iter().filter_map(|o| o.kernel.as_ref().map(|k| (o.name, k.object.inflate())));
    let object_goal = format!("<= {} B", thousands(OBJECT_BUDGET_BYTES));
    let map_goal = format!("<= {} B", thousands(MAP_BUDGET_BYTES));
    let mut total = 0u64;
    for (name, object) in objects {
        let size = object.len() as u64;
        report.row(
            "budgets",
            format!("{name}.bpf.o embedded size"),
            format!("{} B", thousands(size)),
            object_goal.clone(),
            Verdict::check(size <= OBJECT_BUDGET_BYTES),
        );
        match maps_of(&object, cpus) {
            Ok(maps) => {
                for m in maps {
                    total += m.bytes;
                    report.row(
                        "budgets",
                        format!("{name} map {}", m.name),
                        format!("{} B ({})", thousands(m.bytes), m.how),
                        map_goal.clone(),
                        Verdict::check(m.bytes <= MAP_BUDGET_BYTES),
                    );
                }
            }
            Err(e) => report.not_measured("budgets", &format!("{name} maps"), &map_goal, e),
        }
    }
    report.row(
        "budgets",
        "every map of every object (kernel memory the agent locks)",
        format!("{} B", thousands(total)),
        format!("<= {} B", thousands(TOTAL_BUDGET_BYTES)),
        Verdict::check(total <= TOTAL_BUDGET_BYTES),
    );
    report.note(format!(
        "budgets: declared map memory (entries x (key + value); ring buffers by size; per-CPU maps x {cpus} possible \
         CPUs), read from the embedded objects; the kernel's per-element overhead is not included"
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_memory_by_kind() {
        assert_eq!(map_bytes(BPF_MAP_TYPE_RINGBUF, 1 << 20, 0, 0, 2).0, 1 << 20);
        assert_eq!(map_bytes(1, 16384, 8, 64, 2).0, 16384 * 72); // hash
        assert_eq!(map_bytes(BPF_MAP_TYPE_PERCPU_ARRAY, 32, 4, 8, 4).0, 32 * 12 * 4);
    }

    #[test]
    fn every_embedded_object_declares_its_maps() {
        let maps = maps_of(&tapio_bpf::network::OBJECT.inflate(), 2).unwrap();
        let connects = maps.iter().find(|m| m.name == "connects").expect("the connects map");
        assert!(connects.bytes > 0);
        // The network object's rings are per CPU, sharing 512 KiB.
        let events = maps.iter().find(|m| m.name == "events").expect("the ring buffers");
        assert_eq!(events.bytes, 1 << 19, "{}", events.how);
        let on_64 = maps_of(&tapio_bpf::network::OBJECT.inflate(), 64).unwrap();
        let events = on_64.iter().find(|m| m.name == "events").unwrap();
        assert_eq!(events.bytes, 64 * 16 * 1024, "{}", events.how);
        let storage = maps_of(&tapio_bpf::storage::OBJECT.inflate(), 2).unwrap();
        let ring = storage.iter().find(|m| m.name == "events").unwrap();
        assert!(ring.how.starts_with("ring of"), "{}", ring.how);
    }
}
