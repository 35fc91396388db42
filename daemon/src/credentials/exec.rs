//! `exec` credentials: a command that prints
//! `{"value": "...", "expires_at": "2026-01-14T09:00:00Z"}` (the shape of AWS
//! credential_process, reduced to one value). `expires_at` is optional.
//!
//! The command's stdout holds the credential and its stderr may too (a
//! helper that echoes what it fetched), so neither is ever put in an error
//! or a log: errors carry the exit status, byte counts and JSON positions.

use std::{process::Stdio, time::Duration};

use jiff::Timestamp;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::provider::{IssueContext, IssueFuture, Issued, Provider};
use crate::secret::Secret;

/// Output larger than this is refused: a credential is small.
const MAX_OUTPUT: usize = 64 * 1024;

pub struct ExecProvider {
    argv: Vec<String>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct ExecOutput {
    value: String,
    #[serde(default)]
    expires_at: Option<Timestamp>,
}

impl ExecProvider {
    pub fn new(argv: Vec<String>, timeout: Duration) -> ExecProvider {
        ExecProvider { argv, timeout }
    }
}

impl Provider for ExecProvider {
    fn issue<'a>(&'a self, _ctx: &'a IssueContext<'a>) -> IssueFuture<'a> {
        Box::pin(async move {
            let (program, args) = self.argv.split_first().ok_or("empty command")?;
            let child = tokio::process::Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // A command that outlives its timeout is killed, not leaked.
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot run {program}: {e}"))?;
            let output = tokio::time::timeout(self.timeout, child.wait_with_output())
                .await
                .map_err(|_| format!("{program} did not finish within {:?}; killed", self.timeout))?
                .map_err(|e| format!("{program}: {e}"))?;
            let stdout = Zeroizing::new(output.stdout);
            let stderr = Zeroizing::new(output.stderr);
            if !output.status.success() {
                return Err(format!(
                    "{program} exited with {}; its stderr ({} bytes) is not shown because it may contain the credential",
                    output.status,
                    stderr.len()
                ));
            }
            if stdout.len() > MAX_OUTPUT {
                return Err(format!("{program} printed more than {MAX_OUTPUT} bytes"));
            }
            let parsed: ExecOutput = serde_json::from_slice(&stdout).map_err(|e| {
                // serde_json's messages can quote the offending value, which
                // may be the credential: keep only the class and position.
                format!(
                    "{program} printed invalid output ({:?} error at line {} column {}); expected {{\"value\": ..., \"expires_at\": RFC 3339}}",
                    e.classify(),
                    e.line(),
                    e.column()
                )
            })?;
            if parsed.value.is_empty() {
                return Err(format!("{program} printed an empty value"));
            }
            Ok(Issued {
                value: Secret::new(parsed.value),
                expires_at: parsed.expires_at,
            })
        })
    }
}
