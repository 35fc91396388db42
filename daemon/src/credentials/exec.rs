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

/// Why a credential command gave no value. Carries the program, exit
/// status, byte counts and JSON positions: never its output.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("empty command")]
    EmptyCommand,
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?}; killed")]
    Timeout { program: String, timeout: Duration },
    #[error("{program}: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{program} exited with {status}; its stderr ({stderr_bytes} bytes) is not shown because it may contain the credential"
    )]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr_bytes: usize,
    },
    #[error("{program} printed more than {MAX_OUTPUT} bytes")]
    TooLarge { program: String },
    /// serde_json's messages can quote the offending value, which may be
    /// the credential: only the class and position are kept.
    #[error(
        "{program} printed invalid output ({category:?} error at line {line} column {column}); expected {{\"value\": ..., \"expires_at\": RFC 3339}}"
    )]
    BadOutput {
        program: String,
        category: serde_json::error::Category,
        line: usize,
        column: usize,
    },
    #[error("{program} printed an empty value")]
    EmptyValue { program: String },
    #[error("{program} printed something that is not UTF-8")]
    NotUtf8 { program: String },
}

pub struct ExecProvider {
    argv: Vec<String>,
    timeout: Duration,
    /// The whole output is the value (an AWS credential_process's JSON,
    /// read by `aws::AwsFormat`), rather than `{"value", "expires_at"}`.
    raw: bool,
}

#[derive(Deserialize)]
struct ExecOutput {
    value: String,
    #[serde(default)]
    expires_at: Option<Timestamp>,
}

impl ExecProvider {
    pub fn new(argv: Vec<String>, timeout: Duration) -> ExecProvider {
        ExecProvider {
            argv,
            timeout,
            raw: false,
        }
    }

    /// The command's whole output is the value, for a wrapper that reads it
    /// (`format = "aws"`: an AWS credential_process).
    pub fn raw_output(mut self) -> ExecProvider {
        self.raw = true;
        self
    }
}

impl Provider for ExecProvider {
    fn issue<'a>(&'a self, _ctx: &'a IssueContext<'a>) -> IssueFuture<'a> {
        Box::pin(async move {
            let (program, args) = self.argv.split_first().ok_or(ExecError::EmptyCommand)?;
            let named = || program.clone();
            let child = tokio::process::Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // A command that outlives its timeout is killed, not leaked.
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| ExecError::Spawn {
                    program: named(),
                    source,
                })?;
            let output = tokio::time::timeout(self.timeout, child.wait_with_output())
                .await
                .map_err(|_| ExecError::Timeout {
                    program: named(),
                    timeout: self.timeout,
                })?
                .map_err(|source| ExecError::Wait {
                    program: named(),
                    source,
                })?;
            let stdout = Zeroizing::new(output.stdout);
            let stderr = Zeroizing::new(output.stderr);
            if !output.status.success() {
                return Err(ExecError::Failed {
                    program: named(),
                    status: output.status,
                    stderr_bytes: stderr.len(),
                }
                .into());
            }
            if stdout.len() > MAX_OUTPUT {
                return Err(ExecError::TooLarge { program: named() }.into());
            }
            if self.raw {
                let text = std::str::from_utf8(&stdout)
                    .map_err(|_| ExecError::NotUtf8 { program: named() })?
                    .trim();
                if text.is_empty() {
                    return Err(ExecError::EmptyValue { program: named() }.into());
                }
                return Ok(Issued {
                    value: Secret::new(text.to_owned()),
                    expires_at: None,
                });
            }
            let parsed: ExecOutput =
                serde_json::from_slice(&stdout).map_err(|e| ExecError::BadOutput {
                    program: named(),
                    category: e.classify(),
                    line: e.line(),
                    column: e.column(),
                })?;
            if parsed.value.is_empty() {
                return Err(ExecError::EmptyValue { program: named() }.into());
            }
            Ok(Issued {
                value: Secret::new(parsed.value),
                expires_at: parsed.expires_at,
            })
        })
    }
}
