//! Tapio's kernel side and the ABI it shares with the agent.
//!
//! Each observer is one folder under `src/`: its eBPF program (`<name>.bpf.c`), its ABI
//! header (`<name>.h`, the only declaration of its config and event structs) and its Rust
//! module (the embedded object and safe record decoding). The build script compiles the
//! programs with clang (CO-RE) and generates [`abi`] from the headers, so the agent and the
//! kernel cannot disagree about a layout. The build script finds the observer folders
//! and declares their modules, so adding one is adding its folder.

pub mod record;

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

/// Embeds a file 8-byte aligned, as ELF parsing of an eBPF object expects.
macro_rules! include_object {
    ($name:literal) => {{
        #[repr(C)]
        struct Aligned<B: ?Sized> {
            _align: [u64; 0],
            bytes: B,
        }
        static OBJECT: &Aligned<[u8]> =
            &Aligned { _align: [], bytes: *include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".bpf.o")) };
        &OBJECT.bytes
    }};
}
pub(crate) use include_object;

/// Names of the maps every object exposes (see `tapio_bpf.h`).
pub mod maps {
    /// The config carrier: two copies of the object's config (entries 0 and 1).
    pub const CONFIG: &str = "config";
    /// The latch sequence saying which copy of `config` programs read (`seq & 1`).
    pub const CONFIG_SEQ: &str = "config_seq";
    /// Per-CPU loss and refusal counters, indexed by `abi::TAPIO_CNT_*`.
    pub const COUNTERS: &str = "counters";
    /// The ring buffer of fixed event records.
    pub const EVENTS: &str = "events";
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
