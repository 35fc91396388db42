//! `cargo xtask package`: the Debian package, target/debian/warrant_VERSION_amd64.deb.
//!
//! Written with dpkg-deb from a staged tree rather than cargo-deb: nothing
//! extra to compile on a fresh machine or in CI, and the few files are
//! listed here in one place. Contents: /usr/bin/warrant, the units (the gateway's too, not enabled) in
//! /lib/systemd/system, /etc/warrant/warrant.toml (a conffile: kept on
//! upgrade, removed on purge), /etc/warrant/credentials (0700), the README,
//! and the maintainer scripts in systemd/debian/. For operators
//! ([`install_operator_files`]): man pages and bash/zsh/fish completions
//! generated from the clap definitions by the binary itself, the
//! Prometheus alert rules and the Grafana dashboard from contrib/.
//!
//! One .deb for Debian 11 and 12: its binaries are linked against Debian
//! 11's C library (a sysroot made by xtask/sysroot.sh), because a binary
//! linked against the build host's glibc asks for every symbol at the newest
//! version that host has (GLIBC_2.34 for pthread_create on Debian 12), and
//! an older system's loader refuses it. The build checks the result.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{run_cmd, target_dir, workspace_root};

const UNITS: &[&str] = &[
    "warrant.service",
    "warrant.socket",
    "warrant-agents.slice",
    "warrant-gateway.service",
];
const MAINTAINER_SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// The package's target, named explicitly: cargo then keeps its artifacts
/// apart from the host's release build (target/TRIPLE/release) and applies
/// the sysroot's link flag to them only, not to build scripts.
const TRIPLE: &str = "x86_64-unknown-linux-gnu";
/// The oldest Debian release the package installs on; its C library is the
/// one the binaries are linked against.
const SYSROOT_SUITE: &str = "bullseye";
/// Debian 11's glibc: no symbol of the binaries may need a newer one.
const MAX_GLIBC: (u32, u32) = (2, 31);

/// Where the package's binaries are built (see [`build_release`]).
pub fn release_dir() -> Result<PathBuf> {
    Ok(target_dir()?.join(TRIPLE).join("release"))
}

/// `cargo build --release -p warrant EXTRA...` for the package: the
/// binaries link against [`SYSROOT_SUITE`]'s C library, and C code in the
/// dependencies (ring, SQLite) compiles against its headers.
pub fn build_release(extra: &[&str]) -> Result<()> {
    let sysroot = sysroot()?;
    let flag = format!("--sysroot={}", sysroot.display());
    // --sysroot alone is not enough: Debian's gcc looks for crt1.o and the
    // libraries in directories relative to its own prefix (the host's
    // /usr/lib/x86_64-linux-gnu) before the sysroot's, so those are named
    // first (-B for the start files, -L for the libraries).
    let lib = sysroot.join("usr/lib/x86_64-linux-gnu");
    let link_args = [
        flag.clone(),
        format!("-B{}", lib.display()),
        format!("-L{}", lib.display()),
        format!("-L{}", sysroot.join("lib/x86_64-linux-gnu").display()),
    ];
    let rustflags = format!(
        "target.{TRIPLE}.rustflags=[{}]",
        link_args
            .iter()
            .map(|arg| format!("\"-C\", \"link-arg={arg}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run_cmd(
        Command::new(cargo)
            .args(["build", "--release", "-p", "warrant", "--target", TRIPLE])
            .arg("--config")
            .arg(&rustflags)
            .args(extra)
            .env(format!("CFLAGS_{}", TRIPLE.replace('-', "_")), &flag)
            .current_dir(workspace_root()),
    )
}

/// The sysroot (target/sysroot-SUITE), made once by xtask/sysroot.sh.
fn sysroot() -> Result<PathBuf> {
    let dir = target_dir()?.join(format!("sysroot-{SYSROOT_SUITE}"));
    if dir.join("usr/include/stdio.h").exists() {
        return Ok(dir);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    println!("xtask package: fetching Debian {SYSROOT_SUITE}'s C library to link against");
    run_cmd(
        Command::new("bash")
            .arg(workspace_root().join("xtask/sysroot.sh"))
            .arg(&dir)
            .arg(SYSROOT_SUITE),
    )?;
    Ok(dir)
}

/// Builds the release binary (with its eBPF programs) and the .deb; returns
/// the .deb's path.
pub fn run() -> Result<PathBuf> {
    crate::setup::run()?;
    build_release(&[])?;
    let root = workspace_root();
    let binary = release_dir()?.join("warrant");
    let newest = newest_glibc(&binary)?;
    if newest > MAX_GLIBC {
        bail!(
            "{} needs GLIBC_{}.{}, newer than Debian {SYSROOT_SUITE}'s {}.{}: was it linked against the sysroot? (RUSTFLAGS in the environment override the sysroot's link flag)",
            binary.display(),
            newest.0,
            newest.1,
            MAX_GLIBC.0,
            MAX_GLIBC.1
        );
    }
    let version = workspace_version(&root)?;
    let stage = target_dir()?.join("debian/stage");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let install = |from: &Path, to: &str, mode: u32| -> Result<()> {
        let dest = stage.join(to);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(from, &dest)
            .with_context(|| format!("cannot copy {} to {}", from.display(), dest.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    install(&binary, "usr/bin/warrant", 0o755)?;
    // Symbols are of no use on a host and double the package's size.
    run_cmd(
        Command::new("strip")
            .arg("--strip-unneeded")
            .arg(stage.join("usr/bin/warrant")),
    )?;
    for unit in UNITS {
        install(
            &root.join("systemd").join(unit),
            &format!("lib/systemd/system/{unit}"),
            0o644,
        )?;
    }
    install(
        &root.join("daemon/src/config/default.toml"),
        "etc/warrant/warrant.toml",
        0o644,
    )?;
    let credentials = stage.join("etc/warrant/credentials");
    fs::create_dir_all(&credentials)?;
    fs::set_permissions(&credentials, fs::Permissions::from_mode(0o700))?;
    install(
        &root.join("README.md"),
        "usr/share/doc/warrant/README.md",
        0o644,
    )?;
    install_operator_files(&root, &stage, &binary)?;
    fs::write(
        stage.join("usr/share/doc/warrant/copyright"),
        "warrant\nLicense: MIT OR Apache-2.0\n",
    )?;

    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    for script in MAINTAINER_SCRIPTS {
        install(
            &root.join("systemd/debian").join(script),
            &format!("DEBIAN/{script}"),
            0o755,
        )?;
    }
    fs::write(debian.join("conffiles"), "/etc/warrant/warrant.toml\n")?;
    let installed_kib = du_kib(&stage)?;
    let control = format!(
        "Package: warrant\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: warrant developers <warrant@localhost>\n\
         Section: net\n\
         Priority: optional\n\
         Depends: {depends}, systemd\n\
         Installed-Size: {installed_kib}\n\
         Description: takes long-lived LLM API keys out of AI agents\n \
         eBPF programs redirect tagged agents' connections to a local TLS\n \
         injector that attests the calling process, checks policy and splices\n \
         a short-lived credential into each request to the LLM provider.\n",
        depends = shlib_depends(&binary)?,
    );
    fs::write(debian.join("control"), control)?;

    let deb = target_dir()?.join(format!("debian/warrant_{version}_amd64.deb"));
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "-z6", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    println!("xtask package: {}", deb.display());
    Ok(deb)
}

/// Where Debian's man and the shells look, for each file `warrant
/// generate-docs` writes (the completion scripts by their generated name).
const COMPLETIONS: &[(&str, &str)] = &[
    (
        "warrant.bash",
        "usr/share/bash-completion/completions/warrant",
    ),
    ("_warrant", "usr/share/zsh/vendor-completions/_warrant"),
    (
        "warrant.fish",
        "usr/share/fish/vendor_completions.d/warrant.fish",
    ),
];

/// The files operators look for beside the binary, from contrib/: alert
/// rules (and their promtool unit tests, which document each alert by
/// example) and the dashboard.
const CONTRIB: &[(&str, &str)] = &[
    (
        "contrib/prometheus/warrant-alerts.yml",
        "usr/share/warrant/prometheus/warrant-alerts.yml",
    ),
    (
        "contrib/prometheus/warrant-alerts.test.yml",
        "usr/share/warrant/prometheus/warrant-alerts.test.yml",
    ),
    (
        "contrib/grafana/warrant-dashboard.json",
        "usr/share/warrant/grafana/warrant-dashboard.json",
    ),
];

/// Man pages (gzipped, as Debian policy asks), completions, alert rules and
/// the dashboard. The man pages and completions come from running the
/// built `binary`: they are the clap definitions it parses with.
fn install_operator_files(root: &Path, stage: &Path, binary: &Path) -> Result<()> {
    let generated = root.join("target/debian/generated");
    if generated.exists() {
        fs::remove_dir_all(&generated)?;
    }
    let (man, completions) = (generated.join("man"), generated.join("completions"));
    run_cmd(
        Command::new(binary)
            .arg("generate-docs")
            .arg("--man")
            .arg(&man)
            .arg("--completions")
            .arg(&completions),
    )?;
    let man_dir = stage.join("usr/share/man/man1");
    fs::create_dir_all(&man_dir)?;
    let mut pages = 0;
    for entry in fs::read_dir(&man)? {
        let page = entry?.path();
        let Some(name) = page.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let dest = man_dir.join(format!("{name}.gz"));
        // -n: no name or time stamp in the header, so builds are
        // reproducible.
        let out = Command::new("gzip")
            .args(["-9n", "-c"])
            .arg(&page)
            .output()
            .context("cannot run gzip")?;
        if !out.status.success() {
            bail!("gzip {} failed", page.display());
        }
        fs::write(&dest, out.stdout)?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o644))?;
        pages += 1;
    }
    if pages < 2 {
        bail!("warrant generate-docs wrote {pages} man pages");
    }
    let copy = |from: &Path, to: &str| -> Result<()> {
        let dest = stage.join(to);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(from, &dest)
            .with_context(|| format!("cannot copy {} to {}", from.display(), dest.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o644))?;
        Ok(())
    };
    for (file, to) in COMPLETIONS {
        copy(&completions.join(file), to)?;
    }
    for (from, to) in CONTRIB {
        copy(&root.join(from), to)?;
    }
    Ok(())
}

fn workspace_version(root: &Path) -> Result<String> {
    let manifest = fs::read_to_string(root.join("Cargo.toml"))?;
    let doc: toml_edit::DocumentMut = manifest.parse()?;
    doc["workspace"]["package"]["version"]
        .as_str()
        .map(str::to_owned)
        .context("no workspace.package.version in Cargo.toml")
}

/// The dynamic symbol table of `binary` (`objdump -T`).
fn dynamic_symbols(binary: &Path) -> Result<String> {
    let output = Command::new("objdump")
        .arg("-T")
        .arg(binary)
        .output()
        .context("cannot run objdump (binutils)")?;
    if !output.status.success() {
        bail!("objdump -T {} failed", binary.display());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The newest GLIBC symbol version `binary` uses.
fn newest_glibc(binary: &Path) -> Result<(u32, u32)> {
    Ok(dynamic_symbols(binary)?
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("(GLIBC_").or(word.strip_prefix("GLIBC_")))
        .filter_map(|v| {
            let v = v.trim_end_matches(')');
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .unwrap_or((2, 17)))
}

/// libc6 at the newest GLIBC symbol version the binary uses, and libgcc-s1
/// when it links libgcc_s (Rust's unwinder), from `objdump -T`.
fn shlib_depends(binary: &Path) -> Result<String> {
    let newest = newest_glibc(binary)?;
    let mut depends = format!("libc6 (>= {}.{})", newest.0, newest.1);
    if dynamic_symbols(binary)?.contains("GCC_") {
        depends.push_str(", libgcc-s1");
    }
    Ok(depends)
}

fn du_kib(dir: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(&entry.path(), total)?;
            } else {
                *total += meta.len();
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(dir, &mut total)?;
    Ok(total.div_ceil(1024))
}
