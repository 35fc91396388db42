//! Builds the eBPF object for the bpf target (on the nightly toolchain, with
//! bpf-linker) and leaves it in OUT_DIR for `include_bytes!`.
//!
//! With `AYA_BUILD_SKIP=1` an empty stub is written instead, so that `cargo
//! check`, clippy and unprivileged unit tests need no eBPF toolchain. A binary
//! built that way says so when it is asked to load the programs.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("warrant-ebpf");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(&object, []).context("writing the eBPF stub object")?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let ebpf_dir = manifest_dir.join("../ebpf/programs");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // The shared types crate is compiled into the object too.
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../ebpf/common").display()
    );
    aya_build::build_ebpf(
        [aya_build::Package { name: "warrant-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (run `cargo xtask setup` to install bpf-linker and nightly rust-src, or set AYA_BUILD_SKIP=1 for a userspace-only check)")
}
