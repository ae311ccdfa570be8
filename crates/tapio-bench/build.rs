//! Compiles the bench's own eBPF object (`bpf/floor.bpf.c`: empty programs and one that only
//! writes a record, the floors of the kernel measurement) with clang, as tapio-bpf compiles the agent's, against the same
//! headers.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = manifest.join("bpf/floor.bpf.c");
    let include = manifest.join("../tapio-bpf/src/include");
    // The container observer's record layout: one floor writes a record of its size.
    let container = manifest.join("../tapio-bpf/src/container");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed={}", include.display());
    println!("cargo:rerun-if-changed={}", container.join("container.h").display());
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "arm64",
        _ => "x86",
    };
    let status = Command::new(&clang)
        .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{arch}"))
        .arg("-I")
        .arg(&include)
        .arg("-I")
        .arg(&container)
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(out.join("floor.bpf.o"))
        .status()
        .unwrap_or_else(|e| panic!("running {clang} (install clang, or run scripts/setup): {e}"));
    assert!(status.success(), "{clang} failed to compile {}", source.display());
}
