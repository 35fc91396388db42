//! Installs what building and testing warrant need on a fresh Debian machine,
//! and does nothing (quickly) when it is all there.

use std::process::Command;

use anyhow::{Result, bail};

use crate::run_cmd;

/// The LLVM that bpf-linker must be built against (it must match the LLVM of
/// the nightly rustc that compiles the eBPF programs).
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The fuzz targets' runner (`cargo xtask fuzz`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Debian packages: LLVM for bpf-linker; python3 for the tests' clients;
/// iproute2 for network namespaces.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "python3",
    "iproute2",
    // The fleet-wide budget tests start a redis-server on loopback.
    "redis-server",
];

/// Debian packages whose service must not start on this machine: promtool
/// (in `prometheus`) checks and unit-tests the shipped alert rules
/// (daemon/tests/operator_assets.rs); the Prometheus server it brings is
/// not wanted here.
const NO_START_PACKAGES: &[&str] = &["prometheus"];

/// The official SDKs the end-to-end tests drive, pinned so a new release
/// cannot change the tests under us. Installed into target/sdk, not system-wide.
/// boto3 is the Bedrock client (and the signer the anthropic SDK's
/// `AnthropicBedrock` uses); google-genai brings google-auth, which
/// `AnthropicVertex` uses too.
const PYTHON_SDKS: &[&str] = &[
    "openai==3.57.0",
    "anthropic==2.14.0",
    "google-genai==3.6.1",
    "boto3==1.44.8",
    // The official WebSocket client (Realtime, Gemini Live sessions).
    "websockets==17.4",
];
const NODE_SDKS: &[&str] = &["openai@6.49.0"];

/// Where the SDKs go; the tests read WARRANT_SDK_DIR or fall back to this.
pub fn sdk_dir() -> std::path::PathBuf {
    crate::workspace_root().join("target/sdk")
}

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
    install_bench_tools(NO_START_PACKAGES)?;
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
    install_sdks()
}

/// Installs cargo-fuzz if missing: only `cargo xtask fuzz` needs it (the
/// tests replay the corpus in the ordinary build).
pub fn cargo_fuzz() -> Result<()> {
    if !cargo_fuzz_ok() {
        println!("xtask setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
        run_cmd(Command::new("cargo").args([
            "install",
            "--locked",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
    }
    Ok(())
}

fn cargo_fuzz_ok() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION)
        })
}

/// pip and npm into target/sdk, skipped when the marker for this exact list
/// of versions is there.
fn install_sdks() -> Result<()> {
    let dir = sdk_dir();
    let marker = dir.join(format!(
        ".installed-{}",
        [PYTHON_SDKS, NODE_SDKS]
            .concat()
            .join(",")
            .replace(['=', '@', '/'], "_")
    ));
    if marker.exists() {
        return Ok(());
    }
    println!(
        "xtask setup: installing the provider SDKs into {}",
        dir.display()
    );
    let python = dir.join("python");
    let _ = std::fs::remove_dir_all(&python);
    run_cmd(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&python)
            .args(PYTHON_SDKS),
    )?;
    let node = dir.join("node");
    std::fs::create_dir_all(&node)?;
    run_cmd(
        Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&node)
            .args(NODE_SDKS),
    )?;
    std::fs::write(&marker, b"")?;
    Ok(())
}

/// What the benchmarks run beside warrant: nginx (the peer proxy and the fast
/// upstream), wrk (HTTP/1.1 load) and h2load (HTTP/2 load, in
/// nghttp2-client). `bench proxy` needs only nginx.
pub const BENCH_PACKAGES: &[&str] = &["nginx-light", "wrk", "nghttp2-client"];

/// Installs `packages` (Debian names) that are missing, without starting any
/// service they bring (benchmark tools, promtool's package): a policy-rc.d that denies every start is put in place
/// for the install (only if the machine has none) and removed again.
pub fn install_bench_tools(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        // nginx-light or the full nginx: either will do.
        .filter(|p| !(dpkg_installed(p) || (*p == "nginx-light" && dpkg_installed("nginx"))))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing {}", missing.join(" "));
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# written by cargo xtask for one install\nexit 101\n",
        )?;
        run_cmd(Command::new("chmod").arg("755").arg(policy))?;
    }
    let result = run_cmd(Command::new("apt-get").arg("update").arg("-qq")).and_then(|()| {
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    });
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result
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
