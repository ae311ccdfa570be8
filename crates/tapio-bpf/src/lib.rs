//! Tapio's kernel side and the ABI it shares with the agent.
//!
//! Each observer is one folder under `src/`: its eBPF program (`<name>.bpf.c`), its ABI
//! header (`<name>.h`, the only declaration of its config and event structs) and its Rust
//! module (the embedded object and safe record decoding). The build script compiles the
//! programs with clang (CO-RE) and generates [`abi`] from the headers, so the agent and the
//! kernel cannot disagree about a layout. The build script finds the observer folders
//! and declares their modules, so adding one is adding its folder.

pub mod kernel_btf;
pub mod record;

/// An observer's object as the binary carries it: deflated, with its raw length (what the
/// agent reports without inflating it). [`EmbeddedObject::inflate`] makes a loadable copy.
pub struct EmbeddedObject {
    name: &'static str,
    deflated: &'static [u8],
    raw_len: usize,
}

impl EmbeddedObject {
    /// The observer the object belongs to.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Bytes of the object once inflated.
    pub fn raw_len(&self) -> usize {
        self.raw_len
    }

    /// A fresh copy of the object, inflated. `build.rs` checked this exact round trip, so a
    /// failure here means the binary itself is corrupt: that is a panic, not an error to
    /// handle.
    pub fn inflate(&self) -> Object {
        inflate_object(self.name, self.deflated, self.raw_len)
    }
}

/// An inflated eBPF object, 8-byte aligned as ELF parsing expects. Owned by whoever loads
/// it: the loader copies what it keeps, so the object's bytes (about 120 KB for the four)
/// go back to the allocator after loading instead of staying resident on every node.
pub struct Object {
    words: Box<[u64]>,
    len: usize,
}

impl std::ops::Deref for Object {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &as_bytes(&self.words)[..self.len]
    }
}

// `pub mod <observer>;` for every `src/<observer>/` (see build.rs).
include!(concat!(env!("OUT_DIR"), "/observers.rs"));

pub use record::{DecodeError, Record};

/// Rust mirror of the ABI headers, generated at build time (see `build.rs`).
#[allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code)]
#[allow(clippy::all)]
// Generated code: bindgen's zero-filling `Default` impls carry no SAFETY comments.
#[allow(clippy::undocumented_unsafe_blocks)]
pub mod abi {
    include!(concat!(env!("OUT_DIR"), "/abi.rs"));
}

/// The ABI version this build's objects and agent agree on (`TAPIO_ABI_VERSION`).
pub const ABI_VERSION: u32 = abi::TAPIO_ABI_VERSION;

/// Embeds an object deflated (`build.rs` compresses it; the objects are most of the
/// agent's read-only data and shrink to a quarter).
macro_rules! include_object {
    ($name:literal) => {
        crate::EmbeddedObject {
            name: $name,
            deflated: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".bpf.o.zlib")),
            raw_len: include!(concat!(env!("OUT_DIR"), "/", $name, ".bpf.o.len")),
        }
    };
}
pub(crate) use include_object;

/// Inflates `deflated` (zlib, `len` bytes raw), or panics (see [`EmbeddedObject::inflate`]).
fn inflate_object(name: &str, deflated: &[u8], len: usize) -> Object {
    let mut words = vec![0u64; len.div_ceil(8)].into_boxed_slice();
    let inflated = miniz_oxide::inflate::decompress_slice_iter_to_slice(
        as_bytes_mut(&mut words),
        std::iter::once(deflated),
        true,
        false,
    );
    if inflated != Ok(len) {
        panic!("the embedded {name} object does not inflate ({inflated:?}): the binary is corrupt");
    }
    Object { words, len }
}

fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u8 has alignment 1 and no invalid values; the byte view covers exactly the
    // words' memory and borrows them for its lifetime.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), std::mem::size_of_val(words)) }
}

fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; every byte pattern written is a valid u64, and the mutable
    // borrow of the words is held for the view's lifetime.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(words)) }
}

/// Names of the maps every object exposes (see `tapio_bpf.h`).
pub mod maps {
    /// The config carrier: two copies of the object's config (entries 0 and 1).
    pub const CONFIG: &str = "config";
    /// The latch sequence saying which copy of `config` programs read (`seq & 1`).
    pub const CONFIG_SEQ: &str = "config_seq";
    /// Per-CPU loss and refusal counters, indexed by `abi::TAPIO_CNT_*`.
    pub const COUNTERS: &str = "counters";
    /// One u32, nonzero while the agent's drain sleeps without a timer: any record then
    /// wakes it.
    pub const DRAIN_ASLEEP: &str = "drain_asleep";
    /// The ring buffer of fixed event records, or (`TAPIO_EVENT_RINGS_PER_CPU`) the array
    /// of one such ring per CPU.
    pub const EVENTS: &str = "events";
}

/// The smallest ring a CPU gets: about a hundred network records.
pub const MIN_PER_CPU_RING_BYTES: u32 = 16 * 1024;

/// Each CPU's ring of an object whose rings share `total_bytes` (`TAPIO_EVENT_RINGS_PER_CPU`):
/// an equal share, at least [`MIN_PER_CPU_RING_BYTES`] and a page, rounded up to the power
/// of two a ring's size must be. On a node with many CPUs the rings together exceed the
/// total (64 CPUs: 1 MiB for the network object's 512 KiB); the agent maps each ring twice,
/// so its resident set grows by twice the excess.
pub fn per_cpu_ring_bytes(total_bytes: u32, cpus: u32, page_bytes: u32) -> u32 {
    let share = total_bytes / cpus.max(1);
    share.max(MIN_PER_CPU_RING_BYTES).max(page_bytes).checked_next_power_of_two().unwrap_or(1 << 31)
}

/// Counter slots of the per-CPU `counters` map, with the names the agent reports.
pub const COUNTER_NAMES: [(u32, &str); 6] = [
    (abi::TAPIO_CNT_RINGBUF_FULL, "ringbuf_reserve_failed"),
    (abi::TAPIO_CNT_ABI_MISMATCH, "abi_mismatch"),
    (abi::TAPIO_CNT_TABLE_FULL, "correlation_table_full"),
    (abi::TAPIO_CNT_AMBIGUOUS, "ambiguous"),
    (abi::TAPIO_CNT_UNSUPPORTED, "unsupported_kernel"),
    (abi::TAPIO_CNT_CONFIG_TORN, "config_torn_read"),
];
#[cfg(test)]
#[path = "../build/btf_lines.rs"]
mod btf_lines;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cpu_gets_a_power_of_two_share_of_at_least_the_minimum_and_a_page() {
        const TOTAL: u32 = 512 * 1024;
        assert_eq!(per_cpu_ring_bytes(TOTAL, 1, 4096), TOTAL);
        assert_eq!(per_cpu_ring_bytes(TOTAL, 2, 4096), TOTAL / 2);
        // 3 CPUs: a third, rounded up (the rings together exceed the total).
        assert_eq!(per_cpu_ring_bytes(TOTAL, 3, 4096), 256 * 1024);
        assert_eq!(per_cpu_ring_bytes(TOTAL, 64, 4096), 16 * 1024);
        assert_eq!(per_cpu_ring_bytes(TOTAL, 1024, 4096), 16 * 1024);
        assert_eq!(per_cpu_ring_bytes(TOTAL, 1024, 65536), 65536);
        assert_eq!(per_cpu_ring_bytes(TOTAL, 0, 4096), TOTAL);
        assert_eq!(per_cpu_ring_bytes(u32::MAX, 1, 4096), 1 << 31);
    }

    /// Each observer's object is an ELF aligned for the loader and inflates to exactly the
    /// object build.rs compiled.
    #[test]
    fn embedded_objects_inflate_to_the_built_objects() {
        let out = env!("OUT_DIR");
        assert!(OBJECTS.len() >= 4, "every observer folder has an object");
        for embedded in OBJECTS {
            let name = embedded.name();
            let object = embedded.inflate();
            assert_eq!(object.len(), embedded.raw_len(), "{name}");
            assert_eq!(&object[..4], b"\x7fELF", "{name}");
            assert_eq!(object.as_ptr() as usize % 8, 0, "{name}: object must be 8-byte aligned");
            let built =
                std::fs::read(format!("{out}/{name}.bpf.o")).expect("build.rs leaves the raw object in OUT_DIR");
            assert!(*object == *built.as_slice(), "{name}: inflated bytes differ from the built object");
            let deflated = std::fs::metadata(format!("{out}/{name}.bpf.o.zlib")).expect("deflated object").len();
            assert!(deflated * 2 < built.len() as u64, "{name}: {deflated} B deflated of {} B raw", built.len());
        }
    }

    /// build.rs takes the BTF line info out of each object (unless built with
    /// TAPIO_KEEP_BTF_LINE_INFO): what is left names the same strings from the same places,
    /// the types, function info and CO-RE records are otherwise byte for byte clang's, the
    /// string table holds little more than those names, and aya's parser reads the result.
    #[test]
    fn embedded_objects_lose_their_line_info_and_keep_every_type_function_and_relocation() {
        let out = env!("OUT_DIR");
        let kept = option_env!("TAPIO_KEEP_BTF_LINE_INFO").is_some();
        // Tapio needs kernel BTF to run at all; so do its tests.
        let vmlinux = aya_obj::btf::Btf::from_sys_fs().expect("this kernel's BTF (/sys/kernel/btf/vmlinux)");
        for embedded in OBJECTS {
            let name = embedded.name();
            let object = embedded.inflate();
            let lines = btf_lines::line_info_len(&object).expect("readable BTF");
            if kept {
                assert!(lines > 0, "{name}: built with TAPIO_KEEP_BTF_LINE_INFO, yet without line info");
                continue;
            }
            assert_eq!(lines, 0, "{name}: line info left in the embedded object (is llvm-objcopy installed?)");
            let clangs =
                std::fs::read(format!("{out}/{name}.with-lines.bpf.o")).expect("build.rs keeps clang's object");
            assert!(btf_lines::line_info_len(&clangs).expect("readable BTF") > 0, "{name}: clang wrote no line info");
            let (names, rest) = btf_lines::kept_parts(&object).expect("readable BTF");
            let (clang_names, clang_rest) = btf_lines::kept_parts(&clangs).expect("readable BTF");
            assert_eq!(names, clang_names, "{name}: a type, function or relocation names another string");
            assert!(rest == clang_rest, "{name}: types, function info or CO-RE records changed");
            assert!(names.iter().any(|n| n.as_slice() == b"LICENSE"), "{name}: the names were not read");
            let table = btf_lines::string_table_len(&object).expect("readable BTF");
            let names_len: usize = names.iter().map(|n| n.len() + 1).sum();
            assert!(table <= names_len + 1, "{name}: {table} B of strings for {names_len} B of names");
            assert!(object.len() < clangs.len(), "{name}");
            // Nothing left to take out: a second pass gives the same sections.
            let again = btf_lines::without_line_info(&object).expect("readable BTF").expect("BTF");
            let section = |name| btf_lines::section(&object, name).expect("ELF").expect("the section");
            assert!(again.btf == section(".BTF") && again.btf_ext == section(".BTF.ext"), "{name}");
            // Independently of the walk above: aya's parser and CO-RE relocation against this
            // kernel make the same instructions of both objects.
            assert_eq!(relocated(&object, &vmlinux), relocated(&clangs, &vmlinux), "{name}");
        }
    }

    /// build.rs strips the symbols clang gives branch targets (`LBB0_3`); every function
    /// keeps its symbol, the static `__noinline` ones of the sources included (aya finds a
    /// BPF-to-BPF call's target by it), and aya's parser finds each function by name.
    #[test]
    fn embedded_objects_lose_their_branch_labels_and_keep_every_function_symbol() {
        let sources = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut statics = Vec::new();
        for dir in std::fs::read_dir(sources).expect("src/") {
            let dir = dir.expect("src/ entry").path();
            let Some(name) = dir.file_name().and_then(|n| n.to_str()) else { continue };
            let Ok(text) = std::fs::read_to_string(dir.join(format!("{name}.bpf.c"))) else { continue };
            // Definitions only: a declaration ends in ';'.
            for line in text.lines().filter(|l| l.starts_with("static __noinline") && !l.trim_end().ends_with(';')) {
                let before_args = line.split('(').next().unwrap_or_default();
                statics.push(before_args.rsplit(' ').next().unwrap_or_default().to_string());
            }
        }
        assert!(statics.iter().any(|s| s == "exit_judged"), "static functions not found: {statics:?}");
        let mut functions_seen = Vec::new();
        for embedded in OBJECTS {
            let name = embedded.name();
            let object = embedded.inflate();
            let section = |s| btf_lines::section(&object, s).expect("ELF").unwrap_or_else(|| panic!("{name}: no {s}"));
            let (symtab, strtab) = (section(".symtab"), section(".strtab"));
            // Elf64_Sym: st_name (u32) at 0, st_info at 4; 24 bytes each.
            let symbols: Vec<(String, u8)> = symtab
                .chunks_exact(24)
                .map(|sym| {
                    let at = u32::from_le_bytes([sym[0], sym[1], sym[2], sym[3]]) as usize;
                    let text = &strtab[at..];
                    let end = text.iter().position(|&b| b == 0).expect("a terminated name");
                    (String::from_utf8_lossy(&text[..end]).into_owned(), sym[4] & 0xf)
                })
                .collect();
            assert!(symbols.len() > 4, "{name}: symbols not read");
            let labels: Vec<_> = symbols.iter().filter(|(s, _)| s.starts_with("LBB")).collect();
            assert!(labels.is_empty(), "{name}: branch labels left: {labels:?}");
            const STT_FUNC: u8 = 2;
            let functions: Vec<&str> =
                symbols.iter().filter(|(_, t)| *t == STT_FUNC).map(|(s, _)| s.as_str()).collect();
            let parsed = aya_obj::Object::parse(&object).unwrap_or_else(|e| panic!("{name}: aya cannot parse it: {e}"));
            for f in &functions {
                assert!(parsed.functions.values().any(|p| p.name == *f), "{name}: aya does not find {f}");
            }
            functions_seen.extend(functions.iter().map(|f| f.to_string()));
        }
        for s in &statics {
            assert!(functions_seen.contains(s), "static function {s} lost its symbol");
        }
    }

    /// An instruction's code, destination and source registers, offset and immediate.
    type Instruction = (u8, u8, u8, i16, i32);

    /// Every function of an object, relocated against `target` by aya's object parser, by
    /// name.
    fn relocated(elf: &[u8], target: &aya_obj::btf::Btf) -> Vec<(String, Vec<Instruction>)> {
        let mut object = aya_obj::Object::parse(elf).unwrap_or_else(|e| panic!("aya cannot parse it: {e}"));
        object.relocate_btf(target).unwrap_or_else(|e| panic!("aya cannot relocate it: {e}"));
        let mut functions: Vec<_> = object
            .functions
            .values()
            .map(|f| {
                let insns: Vec<_> =
                    f.instructions.iter().map(|i| (i.code, i.dst_reg(), i.src_reg(), i.off, i.imm)).collect();
                (f.name.clone(), insns)
            })
            .collect();
        functions.sort();
        assert!(functions.iter().any(|(_, insns)| !insns.is_empty()), "no instructions read");
        functions
    }

    #[test]
    #[should_panic(expected = "does not inflate")]
    fn a_corrupt_embedded_object_is_refused_loudly() {
        let mut deflated = std::fs::read(concat!(env!("OUT_DIR"), "/storage.bpf.o.zlib")).expect("deflated object");
        let middle = deflated.len() / 2;
        deflated[middle] ^= 0xff;
        inflate_object("storage", &deflated, storage::OBJECT.raw_len());
    }
}
