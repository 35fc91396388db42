//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/ (nightly, libFuzzer
//! with AddressSanitizer): the ClientHello/SNI peek, the request parse, the
//! usage meters (SSE, JSON, WebSocket sessions) and the config loader.
//!
//! What each target checks is in fuzz/properties.rs, which
//! daemon/tests/fuzz_corpus.rs also runs over the corpus kept in the
//! repository (fuzz/corpus/<target>) in the ordinary test build: `cargo
//! xtask test` replays the corpus without building for the sanitizer (a
//! build of 9 minutes unoptimised, about 24 optimised, on a slow 2-core
//! machine). `cargo xtask fuzz [TARGET] [--seconds N]` explores, and adds
//! what it finds to the corpus. A crash fails the run and leaves the input
//! under fuzz/artifacts/<target>/: once fixed, copy it into the corpus so
//! every test run checks it.

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

/// `cargo xtask fuzz`: `target` (all when None) for `seconds` each, adding
/// to the repository's corpus.
pub fn run(target: Option<&str>, seconds: u64) -> Result<()> {
    let targets = pick(target)?;
    for target in targets {
        let corpus = workspace_root().join("fuzz/corpus").join(target);
        fuzz(target, seconds, &[corpus])?;
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

/// `cargo +nightly fuzz run TARGET CORPUS... -- -max_total_time=SECONDS`;
/// the first corpus directory receives new inputs.
fn fuzz(target: &str, seconds: u64, corpora: &[PathBuf]) -> Result<()> {
    println!("xtask: fuzzing {target} for {seconds} s");
    run_cmd(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
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
