//! `cargo xtask bench [NAME]`: the benchmarks, each against a baseline
//! measured in the same run.
//!
//! Five are microbenchmarks, examples of the daemon crate run in release
//! (daemon/examples/bench_NAME.rs); `deployed` measures the real binary as
//! users run it (see deployed/mod.rs).

mod deployed;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::{cargo, setup};

#[derive(Args)]
pub struct BenchArgs {
    /// The bench to run; all of them when none is given.
    #[arg(value_enum)]
    name: Option<Bench>,
    #[command(flatten)]
    deployed: deployed::Options,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    /// connect() cost of the eBPF programs: untagged and tagged cgroups
    /// against one outside the attach point (root).
    Redirect,
    /// Warm attestation per connection; cold executable hashing against
    /// sha256sum.
    Attest,
    /// Policy decision time; credential cache hits.
    Policy,
    /// In-process microbenchmark of the injector (client, mock and injector
    /// in one process, no eBPF) against nginx.
    Proxy,
    /// Metering a streamed response; the usage ledger per request.
    Usage,
    /// The release binary through its eBPF redirect, clients as separate
    /// processes (wrk, h2load), against nginx as the peer proxy (root).
    Deployed,
}

impl Bench {
    fn name(self) -> &'static str {
        match self {
            Bench::Redirect => "redirect",
            Bench::Attest => "attest",
            Bench::Policy => "policy",
            Bench::Proxy => "proxy",
            Bench::Usage => "usage",
            Bench::Deployed => "deployed",
        }
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    setup::run()?;
    let benches = match args.name {
        Some(bench) => vec![bench],
        None => Bench::value_variants().to_vec(),
    };
    for bench in benches {
        println!("== bench {}", bench.name());
        match bench {
            Bench::Deployed => deployed::run(&args.deployed)?,
            Bench::Proxy => {
                setup::install_bench_tools(&["nginx-light"])?;
                example(bench)?;
            }
            _ => example(bench)?,
        }
    }
    Ok(())
}

/// A microbenchmark: daemon/examples/bench_NAME.rs in release.
fn example(bench: Bench) -> Result<()> {
    cargo(&[
        "run",
        "--quiet",
        "--release",
        "-p",
        "warrant",
        "--example",
        &format!("bench_{}", bench.name()),
    ])
}
