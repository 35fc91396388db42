//! The CLI commands that talk to a running daemon over the control socket.

use std::{path::Path, process::ExitCode};

use serde_json::Value;

use crate::control::{ControlRequest, client};

/// Sends `request` and prints the answer (`json`: as JSON); permission and
/// connection errors are printed as they are, with exit status 1.
pub fn run(socket: &Path, request: &ControlRequest, json: bool) -> ExitCode {
    match client::call(socket, request) {
        Ok(result) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).unwrap_or_default()
                );
            } else {
                print!("{}", render(request, &result));
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("warrant: {error}");
            ExitCode::FAILURE
        }
    }
}

fn render(request: &ControlRequest, result: &Value) -> String {
    match request {
        ControlRequest::Status => render_status(result),
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
        ControlRequest::Reload => format!(
            "{}\n",
            serde_json::to_string_pretty(result).unwrap_or_default()
        ),
    }
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

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

fn render_status(status: &Value) -> String {
    let mut out = String::new();
    out.push_str("WORKLOADS (live connections)\n");
    match status.get("workloads").and_then(Value::as_object) {
        Some(map) if !map.is_empty() => {
            for (name, info) in map {
                out.push_str(&format!(
                    "  {name:<28} connections {:<4} requests {}\n",
                    text(info.get("connections")),
                    text(info.get("requests"))
                ));
            }
        }
        _ => out.push_str("  (none)\n"),
    }
    out.push_str("CONNECTIONS\n");
    match status.get("connections").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            for c in list {
                out.push_str(&format!(
                    "  #{:<5} pid {:<7} uid {:<6} {:<12} {:<30} workload {} since {}\n",
                    text(c.get("id")),
                    text(c.get("tgid")),
                    text(c.get("uid")),
                    text(c.get("kind")),
                    text(c.get("upstream")),
                    text(c.get("workload")),
                    text(c.get("since")),
                ));
            }
        }
        _ => out.push_str("  (none)\n"),
    }
    out.push_str("CREDENTIALS\n");
    match status.get("credentials").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            for c in list {
                out.push_str(&format!(
                    "  {:<24} {:<20} expires {:<28} failures {}{}\n",
                    text(c.get("name")),
                    text(c.get("fingerprint")),
                    text(c.get("expires_at")),
                    text(c.get("failures")),
                    c.get("last_error")
                        .and_then(Value::as_str)
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ));
            }
        }
        _ => out.push_str("  (none)\n"),
    }
    out.push_str(&format!("BUDGETS\n  {}\n", text(status.get("budgets"))));
    out.push_str(&format!("INSTANCE\n  {}\n", text(status.get("instance"))));
    if let Some(tagging) = status.get("tagging").filter(|t| !t.is_null()) {
        let healthy = tagging.get("healthy").and_then(Value::as_bool) == Some(true);
        out.push_str(&format!(
            "TAGGING\n  {} tagged {} of capacity {}, not tagged {}, errors {}{}\n",
            if healthy { "healthy" } else { "FAILING" },
            text(tagging.get("tagged")),
            text(tagging.get("capacity")),
            text(tagging.get("untagged")),
            text(tagging.get("errors")),
            tagging
                .get("last_error")
                .and_then(Value::as_str)
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        ));
    }
    out.push_str("QUARANTINES\n");
    match status.get("quarantines").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            for q in list {
                out.push_str(&format!(
                    "  {:<30} by {:<20} since {} until {}: {}\n",
                    target(&serde_json::json!({"target": q.get("target")})),
                    text(q.get("actor")),
                    text(q.get("since")),
                    text(q.get("until")),
                    text(q.get("reason")),
                ));
            }
        }
        _ => out.push_str("  (none)\n"),
    }
    out.push_str(&format!("AUDIT\n  {}\n", text(status.get("audit"))));
    render_kernel(&mut out, status.get("kernel"));
    out
}

/// The kernel's hooks, and every feature that is not simply present.
fn render_kernel(out: &mut String, kernel: Option<&Value>) {
    let Some(kernel) = kernel.filter(|k| !k.is_null()) else {
        return;
    };
    out.push_str(&format!("KERNEL {}\n", text(kernel.get("release"))));
    if let Some(hooks) = kernel.get("hooks").and_then(Value::as_object) {
        for (name, hook) in hooks {
            let state = if hook.get("attached").and_then(Value::as_bool) == Some(true) {
                "attached"
            } else {
                "ABSENT"
            };
            out.push_str(&format!(
                "  {name:<12} {state:<8} {}{}\n",
                text(hook.get("via")),
                hook.get("note")
                    .and_then(Value::as_str)
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ));
        }
    }
    let concerns: Vec<&Value> = kernel
        .get("features")
        .and_then(Value::as_array)
        .map(|all| {
            all.iter()
                .filter(|f| f.get("state").and_then(Value::as_str) != Some("present"))
                .collect()
        })
        .unwrap_or_default();
    for feature in concerns {
        out.push_str(&format!(
            "  {} {}: {}{}\n",
            text(feature.get("feature")),
            text(feature.get("state")),
            text(feature.get("detail")),
            feature
                .get("fix")
                .and_then(Value::as_str)
                .map(|f| format!("; fix: {f}"))
                .unwrap_or_default()
        ));
    }
}
