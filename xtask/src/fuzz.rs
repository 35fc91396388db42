//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/ (nightly, libFuzzer
//! with AddressSanitizer): the ClientHello/SNI peek, the request parse, the
//! usage meters (SSE, JSON, WebSocket sessions) and the config loader.
//!
//! `cargo xtask test` runs each for a bounded time ([`SMOKE_SECONDS`]) from
//! the corpus kept in the repository (fuzz/corpus/<target>), writing what
//! it finds to a scratch directory under the target dir, so a test run
//! never changes the tree. `cargo xtask fuzz [TARGET] [--seconds N]` runs
//! longer and adds what it finds to the repository's corpus. A crash fails
//! the run and leaves the input under fuzz/artifacts/<target>/.

use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{run_cmd, workspace_root};

/// Every target, in fuzz/fuzz_targets/.
pub const TARGETS: &[&str] = &[
    "client_hello",
    "request_parse",
    "usage_meter",
    "websocket_meter",
    "config",
];

/// Seconds per target inside `cargo xtask test`: enough to replay the
/// corpus and explore near it, within CI's budget.
pub const SMOKE_SECONDS: u64 = 20;

/// `cargo xtask fuzz`: `target` (all when None) for `seconds` each, adding
/// to the repository's corpus.
pub fn run(target: Option<&str>, seconds: u64) -> Result<()> {
    let targets = pick(target)?;
    for target in targets {
        let corpus = workspace_root().join("fuzz/corpus").join(target);
        fuzz(target, seconds, Build::Optimised, &[corpus])?;
    }
    Ok(())
}

/// Inside `cargo xtask test`: every target for [`SMOKE_SECONDS`], new
/// inputs to a scratch directory, the repository's corpus read only.
pub fn smoke() -> Result<()> {
    for target in TARGETS {
        let scratch = target_dir().join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        let seeds = workspace_root().join("fuzz/corpus").join(target);
        fuzz(target, SMOKE_SECONDS, Build::Quick, &[scratch, seeds])?;
    }
    Ok(())
}

fn pick(target: Option<&str>) -> Result<Vec<&'static str>> {
    match target {
        None => Ok(TARGETS.to_vec()),
        Some(name) => match TARGETS.iter().find(|t| **t == name) {
            Some(found) => Ok(vec![*found]),
            None => bail!(
                "unknown fuzz target {name:?}; expected one of {}",
                TARGETS.join(", ")
            ),
        },
    }
}

/// Where the sanitizer build goes: apart from the normal build (other
/// flags), under the same target dir.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("fuzz")
}

/// How the fuzz targets are compiled.
#[derive(Clone, Copy)]
enum Build {
    /// cargo-fuzz's default (optimised, debug assertions on): the most
    /// inputs per second, for long runs.
    Optimised,
    /// Unoptimised: the sanitizer build of the daemon and its dependencies
    /// took 9 minutes instead of about 24 on a slow 2-core machine, which
    /// matters more than speed in a 20 s smoke run that mostly replays the
    /// corpus.
    Quick,
}

/// `cargo +nightly fuzz run TARGET CORPUS... -- -max_total_time=SECONDS`;
/// the first corpus directory receives new inputs.
fn fuzz(target: &str, seconds: u64, build: Build, corpora: &[PathBuf]) -> Result<()> {
    println!("xtask: fuzzing {target} for {seconds} s");
    let mut cargo = Command::new("cargo");
    cargo.args(["+nightly", "fuzz", "run", target]);
    if let Build::Quick = build {
        cargo.arg("--dev");
    }
    run_cmd(
        cargo
            .args(corpora)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                // Bounded memory: a parser that grows without bound fails.
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ])
            .current_dir(workspace_root().join("fuzz"))
            // The eBPF object is not needed to fuzz userspace parsers.
            .env("AYA_BUILD_SKIP", "1")
            .env("CARGO_TARGET_DIR", target_dir()),
    )
}
