//! Builds Tapio's kernel side: compiles every `src/<observer>/<observer>.bpf.c` to a CO-RE
//! eBPF object with clang, and generates the Rust mirror of the ABI headers with bindgen,
//! laid out for the BPF target so the generated layout assertions prove both sides agree.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One folder per observer under `src/`, each holding `<name>.bpf.c` and `<name>.h`.
const OBSERVERS: &[&str] = &["network", "container", "storage"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = manifest.join("src");
    let include = src.join("include");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    check_toolchain(&clang);
    for name in OBSERVERS {
        compile_bpf(&clang, &include, &src.join(name), name, &out);
    }
    generate_abi(&include, &src, &out);
}

fn check_toolchain(clang: &str) {
    let ok = Command::new(clang).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        panic!("`{clang}` not found: Tapio compiles its eBPF programs with clang. Install it (Debian: `apt-get install clang libbpf-dev`, or run scripts/setup) or point CLANG at one.");
    }
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        panic!("/usr/include/bpf/bpf_helpers.h not found: install libbpf-dev (Debian: `apt-get install libbpf-dev`, or run scripts/setup).");
    }
}

fn compile_bpf(clang: &str, include: &Path, dir: &Path, name: &str, out: &Path) {
    let source = dir.join(format!("{name}.bpf.c"));
    let object = out.join(format!("{name}.bpf.o"));
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "arm64",
        _ => "x86",
    };
    let status = Command::new(clang)
        .args(["-g", "-O2", "-target", "bpf", "-Wall"])
        .arg(format!("-D__TARGET_ARCH_{arch}"))
        .arg("-I")
        .arg(include)
        .arg("-I")
        .arg(dir)
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    if !status.success() {
        panic!("clang failed to compile {}", source.display());
    }
    strip_debug_info(&object);
    compress_object(&object, out, name);
}

/// Deflates the object for embedding (the agent inflates it once at start-up; see
/// `include_object!`): the objects are most of the agent's read-only data and shrink to a
/// quarter. The raw length goes beside it, and the round trip is checked here so that
/// inflating the embedded bytes cannot fail at run time.
fn compress_object(object: &Path, out: &Path, name: &str) {
    let raw = std::fs::read(object).unwrap_or_else(|e| panic!("reading {}: {e}", object.display()));
    let packed = miniz_oxide::deflate::compress_to_vec_zlib(&raw, 10);
    let mut check = vec![0u8; raw.len()];
    let inflated =
        miniz_oxide::inflate::decompress_slice_iter_to_slice(&mut check, std::iter::once(&packed[..]), true, false);
    if inflated != Ok(raw.len()) || check != raw {
        panic!("{name}.bpf.o does not survive deflate and inflate ({inflated:?})");
    }
    std::fs::write(out.join(format!("{name}.bpf.o.zlib")), &packed).expect("writing the deflated object");
    std::fs::write(out.join(format!("{name}.bpf.o.len")), raw.len().to_string()).expect("writing the object length");
}

/// Drops DWARF from the object (the agent embeds it) while keeping .BTF and .BTF.ext, which
/// CO-RE relocation needs, and the relocations of .BTF and .BTF.ext, which loaders do not
/// apply (libbpf and aya read BTF.ext offsets as section offsets; aya relocates program
/// sections only): a fifth of each object. Without llvm-strip the object is only larger, so
/// that is a warning.
fn strip_debug_info(object: &Path) {
    let unused = ["-g", "--remove-section=.rel.BTF", "--remove-section=.rel.BTF.ext", "--remove-section=.llvm_addrsig"];
    for tool in ["llvm-strip", "llvm-strip-19", "llvm-strip-14"] {
        if let Ok(status) = Command::new(tool).args(unused).arg(object).status() {
            if status.success() {
                return;
            }
        }
    }
    println!("cargo:warning=llvm-strip not found: eBPF objects keep their DWARF (install llvm)");
}

fn generate_abi(include: &Path, src: &Path, out: &Path) {
    let mut wrapper = String::from("#include <linux/types.h>\n#include \"tapio_common.h\"\n");
    for name in OBSERVERS {
        wrapper.push_str(&format!("#include \"{name}.h\"\n"));
    }
    let mut builder = bindgen::Builder::default()
        .header_contents("tapio_abi_wrapper.h", &wrapper)
        // Lay the structs out as the eBPF objects see them; bindgen's layout assertions then
        // fail the build if the Rust mirror ever differs from the kernel side.
        .clang_arg("--target=bpf")
        .clang_arg(format!("-I{}", include.display()))
        .clang_arg("-I/usr/include")
        .clang_arg("-I/usr/include/x86_64-linux-gnu")
        .allowlist_type("tapio_.*")
        .allowlist_var("TAPIO_.*")
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(true)
        .derive_partialeq(true)
        .layout_tests(true)
        .use_core();
    for name in OBSERVERS {
        builder = builder.clang_arg(format!("-I{}", src.join(name).display()));
    }
    let bindings = builder.generate().expect("bindgen could not read the ABI headers");
    bindings.write_to_file(out.join("abi.rs")).expect("writing abi.rs");
}
