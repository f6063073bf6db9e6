//! Compiles the C programs in `bpf/` into one BPF object with Debian's clang.
//!
//! `-g` keeps BTF, which aya needs for the BTF-defined maps (`SEC(".maps")`), for socket
//! storage (the kernel requires BTF for its value type) and for the `lsm_cgroup` programs.
//! `-I/usr/include/<triple>` provides the `asm/` headers that `linux/*.h` include; they
//! are not on clang's path when it targets bpf. The object lands in OUT_DIR and is embedded
//! by `src/object.rs`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR not set by cargo")?);
    let src = PathBuf::from("bpf/fence.bpf.c");
    for file in ["bpf/fence.bpf.c", "bpf/maps.h"] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let obj = out.join("fence.bpf.o");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .with_context(|| {
            format!("running {clang} (install clang and libbpf-dev to build egress-ebpf)")
        })?;
    if !status.success() {
        bail!("{clang} failed to compile {}: {status}", src.display());
    }
    Ok(())
}
