//! The CLI side of the control socket: one request, one answer.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde_json::Value;

use super::ControlRequest;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "permission denied: cannot open the control socket {0} (root, or the configured admin group, only)"
    )]
    PermissionDenied(String),
    #[error("cannot reach the control socket {path} (is warrant running?): {source}")]
    Unreachable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket: bad answer: {0}")]
    BadAnswer(String),
    /// The daemon answered with an error (e.g. "permission denied: ...").
    #[error("{0}")]
    Refused(String),
}

/// How long the CLI waits for an answer: `explain` hashes files, `reload`
/// reads the config; both are quick, a hung daemon is not.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `request` and returns the `result` of an `ok` answer.
pub fn call(socket: &Path, request: &ControlRequest) -> Result<Value, ClientError> {
    let shown = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ClientError::PermissionDenied(shown.clone())
        } else {
            ClientError::Unreachable {
                path: shown.clone(),
                source,
            }
        }
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut line =
        serde_json::to_string(request).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    line.push('\n');
    // The daemon may answer a refused peer and close before reading: a
    // failed write is then not the error to report.
    let _ = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    let answer: Value =
        serde_json::from_str(&answer).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    if answer.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    } else {
        Err(ClientError::Refused(
            answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_owned(),
        ))
    }
}
