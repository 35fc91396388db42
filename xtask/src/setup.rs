//! Installs what building and testing warrant need on a fresh Debian machine,
//! and does nothing (quickly) when it is all there.

use std::process::Command;

use anyhow::{Result, bail};

use crate::run_cmd;

/// The LLVM that bpf-linker must be built against (it must match the LLVM of
/// the nightly rustc that compiles the eBPF programs).
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages: LLVM for bpf-linker; python3 for the tests' clients;
/// iproute2 for network namespaces.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "python3",
    "iproute2",
];

pub fn run() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        println!("xtask setup: installing {}", missing.join(" "));
        run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if !rust_src_installed() {
        println!("xtask setup: adding rust-src to the nightly toolchain");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !bpf_linker_ok() {
        println!(
            "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (a few minutes)"
        );
        run_cmd(
            Command::new("cargo")
                .args([
                    "install",
                    "--locked",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                ])
                .args([
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{LLVM_MAJOR}"),
                ])
                .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}")),
        )?;
        if !bpf_linker_ok() {
            bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
        }
    }
    Ok(())
}

pub fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

fn rust_src_installed() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        })
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
