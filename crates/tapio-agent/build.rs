//! Link settings for the shipped agent: the `agent` profile (release + panic=abort).
//!
//! Two sections of the linked binary do nothing in that build, and together they were
//! ~180 KB of a ~1.38 MB agent:
//!
//! - Unwind tables (`.eh_frame`, its index and the LSDAs). With panic=abort nothing unwinds:
//!   a panic prints its message and aborts. rustc emits the tables anyway on x86-64 (also
//!   with `-C force-unwind-tables=no`, measured byte for byte), so a linker script discards
//!   them. What is lost: a `RUST_BACKTRACE` stack of the stripped binary, which had no names
//!   to show, and `perf --call-graph=dwarf` of it. `TAPIO_KEEP_UNWIND_TABLES=1` keeps them
//!   (for profiling a build of this profile).
//! - The dynamic relative relocations (PIE): 24 bytes each in `.rela.dyn`, a few bits each
//!   packed (`-z pack-relative-relocs`, DT_RELR). Only where the C library being linked
//!   provides DT_RELR (glibc 2.36+): the binary then needs that glibc, as it already needs
//!   the glibc it was built against for its symbol versions; the image carries it.
//!
//! Cargo tells a build script neither the profile's name nor its panic strategy
//! (`CARGO_CFG_PANIC` is the target's default), so the profile is read from where cargo puts
//! this script's output: `<target dir>/[<triple>/]<profile>/build/<package>-<hash>/out`.
//! Tests, `cargo run` and the plain release profile (which unwinds) are linked as before.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The profile that ships (Cargo.toml: `[profile.agent]`, panic = "abort").
const SHIPPED_PROFILE: &str = "agent";

const DISCARD_UNWIND_TABLES: &str = "\
/* Written by tapio-agent's build.rs: the agent profile aborts on panic, nothing unwinds. */
SECTIONS {
  /DISCARD/ : { *(.eh_frame) *(.eh_frame_hdr) *(.gcc_except_table .gcc_except_table.*) }
} INSERT AFTER .text;
";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TAPIO_KEEP_UNWIND_TABLES");
    println!("cargo:rerun-if-env-changed=CC");
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if profile_of(&out_dir) != Some(SHIPPED_PROFILE) || target_os != "linux" {
        return;
    }

    if env::var_os("TAPIO_KEEP_UNWIND_TABLES").is_none() {
        let script = out_dir.join("discard-unwind-tables.ld");
        if let Err(err) = std::fs::write(&script, DISCARD_UNWIND_TABLES) {
            panic!("writing {}: {err}", script.display());
        }
        println!("cargo:rustc-link-arg-bin=tapio-agent=-Wl,-T,{}", script.display());
    }

    if target_env == "gnu" && linked_glibc_has_relr() {
        println!("cargo:rustc-link-arg-bin=tapio-agent=-Wl,-z,pack-relative-relocs");
    }
}

/// The profile directory cargo builds into, from this script's OUT_DIR.
fn profile_of(out_dir: &Path) -> Option<&str> {
    let mut up = out_dir.ancestors().skip(1); // <package>-<hash>, build, <profile>
    let build = up.nth(1)?;
    if build.file_name()? != "build" {
        return None;
    }
    up.next()?.file_name()?.to_str()
}

/// Whether the C library the linker driver links against defines the DT_RELR ABI version
/// (glibc 2.36+). A loader without it refuses a binary that asks for it, so without a clear
/// yes the relocations stay unpacked.
fn linked_glibc_has_relr() -> bool {
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let Ok(out) = Command::new(cc).arg("-print-file-name=libc.so.6").output() else {
        return false;
    };
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !Path::new(&path).is_absolute() {
        return false;
    }
    println!("cargo:rerun-if-changed={path}");
    let Ok(libc) = std::fs::read(&path) else {
        return false;
    };
    let needle = b"GLIBC_ABI_DT_RELR\0";
    libc.windows(needle.len()).any(|w| w == needle)
}
