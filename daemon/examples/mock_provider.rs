//! A stand-in for the OpenAI, Anthropic and Gemini APIs, for the demo and the
//! VM tests (the privileged tests use the same code in-process:
//! `warrant_test_support::mock_provider`). Loopback or a test VM only.
//!
//! Writes its throwaway CA to `--ca-out`, checks each provider's key (`--key
//! openai=FILE`), appends every request as a JSON line to `--record`, and
//! prints "ready" once listening.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use warrant_test_support::mock_provider;

#[derive(Parser)]
struct Args {
    /// Addresses to listen on (TLS), e.g. 127.0.0.2:443.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Where to write the throwaway CA certificate (PEM).
    #[arg(long)]
    ca_out: PathBuf,
    /// Append one JSON line per request here.
    #[arg(long)]
    record: Option<PathBuf>,
    /// PROVIDER=FILE: the key each provider expects (openai, anthropic, gemini).
    #[arg(long = "key", value_parser = parse_key)]
    keys: Vec<(String, PathBuf)>,
    /// Delay between streamed events, in ms.
    #[arg(long, default_value_t = 20)]
    event_delay_ms: u64,
}

fn parse_key(text: &str) -> Result<(String, PathBuf), String> {
    let (provider, file) = text.split_once('=').ok_or("expected PROVIDER=FILE")?;
    Ok((provider.to_owned(), PathBuf::from(file)))
}

fn main() {
    let args = Args::parse();
    let keys = args
        .keys
        .iter()
        .map(|(provider, file)| {
            (
                provider.clone(),
                std::fs::read_to_string(file).unwrap().trim().to_owned(),
            )
        })
        .collect();
    let settings = mock_provider::MockSettings {
        keys,
        record_file: args.record,
        event_delay: Duration::from_millis(args.event_delay_ms),
    };
    let mock = mock_provider::MockProvider::start(&args.listen, settings)
        .expect("start the mock provider");
    std::fs::write(&args.ca_out, &mock.ca_pem).unwrap();
    println!("ready");
    // Serve until killed.
    loop {
        std::thread::park();
    }
}
