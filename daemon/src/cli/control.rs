//! The CLI commands that talk to a running daemon over the control socket.

use std::{path::Path, process::ExitCode};

use serde_json::Value;

use crate::{
    control::{ControlRequest, client, status::Status},
    gateway::PinEntry,
};

/// Sends `request` and prints the answer (`json`: as the daemon sent it);
/// permission and connection errors are printed as they are, with exit
/// status 1.
pub fn run(socket: &Path, request: &ControlRequest, json: bool) -> ExitCode {
    let result = match client::call(socket, request) {
        Ok(result) => result,
        Err(error) => {
            eprintln!("warrant: {error}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    match render(request, &result) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("warrant: the daemon's answer is not what this warrant reads: {error}");
            ExitCode::FAILURE
        }
    }
}

fn render(request: &ControlRequest, result: &Value) -> Result<String, serde_json::Error> {
    Ok(match request {
        ControlRequest::Status => {
            let status: Status = serde_json::from_value(result.clone())?;
            super::status::render(&status, jiff::Timestamp::now())
        }
        ControlRequest::Explain { .. } => result
            .get("text")
            .and_then(Value::as_str)
            .map(|t| format!("{t}\n"))
            .unwrap_or_default(),
        ControlRequest::Revoke { .. } => format!(
            "quarantined {}: {} live connection(s) closed{}\n",
            target(result),
            result.get("closed").and_then(Value::as_u64).unwrap_or(0),
            result
                .get("until")
                .and_then(Value::as_str)
                .map(|u| format!(", until {u}"))
                .unwrap_or_else(|| ", until restored".to_owned())
        ),
        ControlRequest::Restore { .. } => {
            if result.get("restored").and_then(Value::as_bool) == Some(true) {
                format!("restored {}\n", target(result))
            } else {
                format!("{} was not quarantined\n", target(result))
            }
        }
        ControlRequest::Reload => reloaded(result),
        ControlRequest::Pins => pins(result)?,
        ControlRequest::Unpin { instance, .. } => match result.get("released") {
            Some(Value::Object(pin)) => format!(
                "released the pin of {instance} to {}: {}\n",
                pin.get("key").and_then(Value::as_str).unwrap_or("?"),
                result.get("to").and_then(Value::as_str).map_or_else(
                    || "the next key to enroll as it is pinned".to_owned(),
                    |key| format!("pinned to {key} now")
                )
            ),
            _ => format!("{instance} was not pinned (nothing changed)\n"),
        },
    })
}

/// The enrollment pins, one line each.
fn pins(result: &Value) -> Result<String, serde_json::Error> {
    let pins: Vec<PinEntry> =
        serde_json::from_value(result.get("pins").cloned().unwrap_or_default())?;
    if pins.is_empty() {
        return Ok("no enrollment pins\n".to_owned());
    }
    let time = |secs: i64| {
        jiff::Timestamp::from_second(secs).map_or_else(|_| secs.to_string(), |t| t.to_string())
    };
    Ok(pins
        .iter()
        .map(|p| {
            let launch = if p.pin.launch == 0 {
                String::new()
            } else {
                format!(" (launch {})", time(p.pin.launch))
            };
            format!(
                "{} pinned to {} since {}{launch}\n",
                p.instance,
                p.pin.key,
                time(p.pin.pinned_at)
            )
        })
        .collect())
}

/// The reload answer in words: what was applied, and what needs a restart.
fn reloaded(result: &Value) -> String {
    let number = |key: &str| result.get(key).and_then(Value::as_u64).unwrap_or(0);
    let mut out = format!(
        "applied {} without dropping connections: {} workloads, {} credentials, {} policies\n",
        result.get("config").and_then(Value::as_str).unwrap_or("?"),
        number("workloads"),
        number("credentials"),
        number("policies"),
    );
    let restart: Vec<&str> = result
        .get("restart_needed")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !restart.is_empty() {
        out.push_str(&format!(
            "changed but read only at start, so not applied: {} (systemctl restart warrant)\n",
            restart.join(", ")
        ));
    }
    out
}

fn target(result: &Value) -> String {
    match result.get("target") {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(kind, value)| match value {
                Value::String(s) => format!("{kind} {s}"),
                other => format!("{kind} {other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => "?".to_owned(),
    }
}
