//! Reading the audit trail back, for the operator (`warrant audit`): "who
//! is spending what?" and "why was this refused?" without jq.
//!
//! The request path never reads the trail (audit is a sink); this is an
//! offline reader of the files it left: the live file and the ones the
//! daemon's own size-based rotation made (`audit.jsonl.1` ... `.N`, the
//! highest the oldest), and the same names compressed with gzip (`.gz`),
//! for operators who archive rotated files that way. Lines are parsed with
//! the writer's own type ([`AuditRecord`]), so there is one schema.
//! A line that does not parse (a newer daemon's field value, a damaged
//! file) is counted and reported, never fatal; the last line of the live
//! file is skipped while it has no newline (a write in progress).
//!
//! Days of the summary are UTC days, as the records' times are.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use jiff::Timestamp;
use serde::Serialize;

use super::{AuditRecord, Outcome, RecordKind, Target};

/// Why the trail could not be read.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{path}: {source}{hint}", hint = permission_hint(source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no audit log at {0} (nor rotated files beside it)")]
    NoFiles(PathBuf),
}

fn permission_hint(error: &std::io::Error) -> &'static str {
    if error.kind() == std::io::ErrorKind::PermissionDenied {
        " (the audit log is root-only: run warrant audit as root)"
    } else {
        ""
    }
}

/// Which records to keep. Empty fields keep everything.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub workload: Option<String>,
    /// Any of these outcomes (requests only).
    pub outcomes: Vec<Outcome>,
    /// Only refusals: requests with a refusal reason, and refused
    /// connections.
    pub refused: bool,
    pub upstream: Option<String>,
    /// A glob over the model name (`gpt-4o*`).
    pub model: Option<globset::GlobMatcher>,
    /// From this time on (inclusive).
    pub since: Option<Timestamp>,
    /// Before this time (exclusive).
    pub until: Option<Timestamp>,
}

/// One record with its time, as read.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: Timestamp,
    pub record: AuditRecord,
}

/// The records read and what could not be.
#[derive(Debug, Default)]
pub struct Trail {
    /// Oldest first.
    pub entries: Vec<Entry>,
    /// The files read, oldest first.
    pub files: Vec<PathBuf>,
    /// Lines that did not parse: how many, and where the first few are.
    pub unreadable: u64,
    pub unreadable_at: Vec<String>,
}

/// Where the first unreadable lines are reported, at most.
const UNREADABLE_SHOWN: usize = 5;

impl Filter {
    pub fn matches(&self, entry: &Entry) -> bool {
        let r = &entry.record;
        self.since.is_none_or(|since| entry.time >= since)
            && self.until.is_none_or(|until| entry.time < until)
            && self
                .workload
                .as_deref()
                .is_none_or(|w| workload_of(r) == Some(w))
            && self.upstream.as_deref().is_none_or(|u| {
                r.upstream
                    .as_deref()
                    .is_some_and(|host| host.eq_ignore_ascii_case(u))
            })
            && self
                .model
                .as_ref()
                .is_none_or(|m| r.model.as_deref().is_some_and(|model| m.is_match(model)))
            && (self.outcomes.is_empty() || r.outcome.is_some_and(|o| self.outcomes.contains(&o)))
            && (!self.refused || is_refusal(r))
    }
}

/// The workload a record is about: its caller's, or a quarantine's target.
pub fn workload_of(record: &AuditRecord) -> Option<&str> {
    match (&record.workload, &record.target) {
        (Some(w), _) => Some(w),
        (None, Some(Target::Workload(w))) => Some(w),
        _ => None,
    }
}

/// A refused request, or a connection closed before any request.
pub fn is_refusal(record: &AuditRecord) -> bool {
    record.kind == RecordKind::ConnectionRefused
        || (record.kind == RecordKind::Request && record.refusal_reason().is_some())
}

/// The live file and its rotated siblings (plain or .gz), oldest first.
pub fn files(live: &Path) -> Result<Vec<PathBuf>, QueryError> {
    let dir = match live.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(base) = live.file_name().and_then(|n| n.to_str()) else {
        return Err(QueryError::NoFiles(live.to_path_buf()));
    };
    let listing = std::fs::read_dir(dir).map_err(|source| QueryError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    // (generation: 0 is the live file, N the Nth rotation), path
    let mut found: Vec<(u32, PathBuf)> = listing
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let rest = name.strip_prefix(base)?;
            let rest = rest.strip_suffix(".gz").unwrap_or(rest);
            let generation = match rest {
                "" => 0,
                n => n.strip_prefix('.')?.parse().ok()?,
            };
            Some((generation, entry.path()))
        })
        .collect();
    if found.is_empty() {
        return Err(QueryError::NoFiles(live.to_path_buf()));
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Reads every record of the trail whose live file is `live`.
pub fn read(live: &Path) -> Result<Trail, QueryError> {
    let mut trail = Trail::default();
    for path in files(live)? {
        read_file(&path, path == live, &mut trail)?;
        trail.files.push(path);
    }
    Ok(trail)
}

fn read_file(path: &Path, live: bool, trail: &mut Trail) -> Result<(), QueryError> {
    let error = |source| QueryError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(error)?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut lines = BufReader::new(reader);
    let mut line = String::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if lines.read_line(&mut line).map_err(error)? == 0 {
            return Ok(());
        }
        number += 1;
        // The daemon writes whole lines; one without its newline at the
        // end of the live file is being written right now.
        if live && !line.ends_with('\n') {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        match parse(&line) {
            Some(entry) => trail.entries.push(entry),
            None => {
                trail.unreadable += 1;
                if trail.unreadable_at.len() < UNREADABLE_SHOWN {
                    trail
                        .unreadable_at
                        .push(format!("{}:{number}", path.display()));
                }
            }
        }
    }
}

fn parse(line: &str) -> Option<Entry> {
    let record: AuditRecord = serde_json::from_str(line).ok()?;
    let time = record.time.parse().ok()?;
    Some(Entry { time, record })
}

/// One workload's requests on one (UTC) day.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DaySummary {
    /// YYYY-MM-DD, UTC.
    pub day: String,
    /// "unknown" when no workload matched.
    pub workload: String,
    pub requests: u64,
    pub forwarded: u64,
    /// Refused requests by reason (`AuditRecord::refusal_reason`).
    pub refused: BTreeMap<String, u64>,
    /// Not refused but not served either: no credential, upstream errors,
    /// connections closed before the response ended.
    pub failed: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// Request records summed per workload and UTC day, in day then workload
/// order.
pub fn summarize<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<DaySummary> {
    let mut days: BTreeMap<(String, String), DaySummary> = BTreeMap::new();
    for entry in entries {
        let r = &entry.record;
        if r.kind != RecordKind::Request {
            continue;
        }
        let day = entry
            .time
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date()
            .to_string();
        let workload = r
            .workload
            .clone()
            .unwrap_or_else(|| super::UNKNOWN.to_owned());
        let summary = days
            .entry((day.clone(), workload.clone()))
            .or_insert_with(|| DaySummary {
                day,
                workload,
                ..DaySummary::default()
            });
        summary.requests += 1;
        match (r.refusal_reason(), r.outcome) {
            (Some(reason), _) => *summary.refused.entry(reason).or_default() += 1,
            (None, Some(Outcome::Forwarded | Outcome::PassedThrough | Outcome::Emulated)) => {
                summary.forwarded += 1
            }
            (None, _) => summary.failed += 1,
        }
        if let Some(usage) = &r.usage {
            summary.input_tokens += usage.input_tokens.unwrap_or(0);
            summary.output_tokens += usage.output_tokens.unwrap_or(0);
            summary.cost_usd += usage.cost_usd.unwrap_or(0.0);
        }
    }
    days.into_values().collect()
}

/// Why a `--since`/`--until` value cannot be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?}: expected a time (2026-12-01T09:30:00Z), a UTC day (2026-12-01), \"today\", \"yesterday\", or a span ago (30m, 24h, 7d)"
)]
pub struct BadTime(pub String);

/// A point in time from the command line, relative to `now` where it is a
/// span ("24h": 24 hours ago) or a day name (UTC midnight).
pub fn parse_time(text: &str, now: Timestamp) -> Result<Timestamp, BadTime> {
    let bad = || BadTime(text.to_owned());
    let utc = jiff::tz::TimeZone::UTC;
    let today = now.to_zoned(utc.clone()).date();
    let midnight = |date: jiff::civil::Date| {
        date.to_zoned(utc.clone())
            .map(|z| z.timestamp())
            .map_err(|_| bad())
    };
    match text.trim() {
        "today" => return midnight(today),
        "yesterday" => return midnight(today.yesterday().map_err(|_| bad())?),
        _ => {}
    }
    if let Ok(at) = text.parse::<Timestamp>() {
        return Ok(at);
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>() {
        return midnight(date);
    }
    let span: jiff::Span = text.parse().map_err(|_| bad())?;
    now.to_zoned(utc)
        .checked_sub(span.abs())
        .map(|z| z.timestamp())
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{
        audit::{AuditLog, Usage},
        config::AuditConfig,
        policy::{Decision, Factor, FactorOutcome},
    };

    fn at(rfc3339: &str) -> Timestamp {
        rfc3339.parse().unwrap()
    }

    fn request(time: &str, workload: &str, outcome: Outcome) -> AuditRecord {
        let mut r = AuditRecord::new(RecordKind::Request);
        r.time = time.to_owned();
        r.workload = Some(workload.to_owned());
        r.outcome = Some(outcome);
        r.upstream = Some("api.openai.com".to_owned());
        r.model = Some("gpt-4o-mini".to_owned());
        r
    }

    fn decision(allowed: bool, failing: &[Factor]) -> Decision {
        Decision {
            allowed,
            workload: "a".into(),
            rule: Some(0),
            factors: failing
                .iter()
                .map(|&factor| FactorOutcome {
                    factor,
                    passed: false,
                    reason: "no".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn every_outcome_is_named_as_serde_writes_it() {
        for outcome in [
            Outcome::Forwarded,
            Outcome::PassedThrough,
            Outcome::Emulated,
            Outcome::Denied,
            Outcome::Quarantined,
            Outcome::AgentKey,
            Outcome::Refused,
            Outcome::NoCredential,
            Outcome::UpstreamError,
            Outcome::AuditUnavailable,
            Outcome::Aborted,
        ] {
            assert_eq!(serde_json::to_value(outcome).unwrap(), outcome.as_str());
        }
    }

    #[test]
    fn refusal_reasons_name_the_factor_the_budget_or_the_refusing_outcome() {
        let mut r = request("2026-12-01T10:00:00Z", "a", Outcome::Denied);
        r.decision = Some(decision(false, &[Factor::Time, Factor::Posture]));
        assert_eq!(r.refusal_reason().as_deref(), Some("time+posture"));
        // Policy allowed it: the budget refused it (a 429).
        r.decision = Some(decision(true, &[]));
        assert_eq!(r.refusal_reason().as_deref(), Some("budget"));
        r.outcome = Some(Outcome::Quarantined);
        assert_eq!(r.refusal_reason().as_deref(), Some("quarantined"));
        r.outcome = Some(Outcome::UpstreamError);
        assert_eq!(r.refusal_reason(), None, "a failure, not a refusal");
    }

    /// Writes `records` through the daemon's own log, rotating every few.
    fn write_trail(dir: &Path, records: &[AuditRecord]) -> PathBuf {
        let path = dir.join("audit.jsonl");
        let config = AuditConfig {
            max_bytes: 900,
            keep: 20,
            ..AuditConfig::default()
        };
        let log = AuditLog::open(&path, &config, None);
        for record in records {
            assert!(log.write(record));
        }
        path
    }

    fn trail_of_two_days() -> Vec<AuditRecord> {
        let mut records = Vec::new();
        for (n, day) in ["2026-11-30", "2026-12-01"].iter().enumerate() {
            for i in 0..3 {
                let mut r = request(&format!("{day}T0{i}:00:00Z"), "support", Outcome::Forwarded);
                r.usage = Some(Usage {
                    input_tokens: Some(100),
                    output_tokens: Some(10 * (n as u64 + 1)),
                    cost_usd: Some(0.25),
                });
                records.push(r);
            }
            let mut denied = request(&format!("{day}T05:00:00Z"), "support", Outcome::Denied);
            denied.decision = Some(decision(true, &[]));
            denied.message = Some("budget tokens_per_hour of \"support\" exhausted".into());
            records.push(denied);
        }
        let mut other = request("2026-12-01T06:00:00Z", "coder", Outcome::Denied);
        other.decision = Some(decision(false, &[Factor::Time]));
        other.model = Some("claude-sonnet-4".into());
        records.push(other);
        records
    }

    #[test]
    fn the_rotated_files_are_read_oldest_first_and_summed_per_workload_and_day() {
        let dir = tempfile::tempdir().unwrap();
        let live = write_trail(dir.path(), &trail_of_two_days());
        let trail = read(&live).unwrap();
        assert!(trail.files.len() > 2, "rotated: {:?}", trail.files);
        assert_eq!(trail.files.last(), Some(&live));
        assert_eq!(trail.entries.len(), 9);
        assert!(trail.entries.windows(2).all(|w| w[0].time <= w[1].time));
        let summary = summarize(&trail.entries);
        let support: Vec<&DaySummary> =
            summary.iter().filter(|s| s.workload == "support").collect();
        assert_eq!(support.len(), 2);
        assert_eq!(support[0].day, "2026-11-30");
        assert_eq!((support[0].requests, support[0].forwarded), (4, 3));
        assert_eq!(support[0].refused, BTreeMap::from([("budget".into(), 1)]));
        assert_eq!(
            (support[1].input_tokens, support[1].output_tokens),
            (300, 60)
        );
        assert!((support[1].cost_usd - 0.75).abs() < 1e-9);
        let coder = summary.iter().find(|s| s.workload == "coder").unwrap();
        assert_eq!(coder.refused, BTreeMap::from([("time".into(), 1)]));
    }

    #[test]
    fn gzipped_rotations_partial_lines_and_damaged_lines_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        let live = write_trail(dir.path(), &trail_of_two_days());
        // An operator archived the oldest rotation with gzip.
        let oldest = files(&live).unwrap().remove(0);
        let plain = std::fs::read(&oldest).unwrap();
        let gz = PathBuf::from(format!("{}.gz", oldest.display()));
        let mut encoder =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &plain).unwrap();
        encoder.finish().unwrap();
        std::fs::remove_file(&oldest).unwrap();
        // A damaged line in a rotated file, a write in progress in the live one.
        let second = files(&live).unwrap().remove(1);
        let mut text = std::fs::read_to_string(&second).unwrap();
        text.push_str("{\"kind\":\"request\",\"outcome\":\"teleported\",\"time\":\"x\"}\n");
        std::fs::write(&second, text).unwrap();
        let mut text = std::fs::read_to_string(&live).unwrap();
        text.push_str("{\"kind\":\"requ");
        std::fs::write(&live, text).unwrap();
        let trail = read(&live).unwrap();
        assert_eq!(trail.entries.len(), 9, "the gzipped records are read too");
        assert_eq!(trail.unreadable, 1);
        assert!(trail.unreadable_at[0].starts_with(&second.display().to_string()));
    }

    #[test]
    fn filters_select_by_workload_outcome_upstream_model_time_and_refusal() {
        let entries: Vec<Entry> = trail_of_two_days()
            .into_iter()
            .map(|record| Entry {
                time: record.time.parse().unwrap(),
                record,
            })
            .collect();
        let count = |filter: &Filter| entries.iter().filter(|e| filter.matches(e)).count();
        assert_eq!(count(&Filter::default()), 9);
        let by_workload = Filter {
            workload: Some("coder".into()),
            ..Filter::default()
        };
        assert_eq!(count(&by_workload), 1);
        let refused = Filter {
            refused: true,
            ..Filter::default()
        };
        assert_eq!(count(&refused), 3);
        let forwarded = Filter {
            outcomes: vec![Outcome::Forwarded],
            since: Some(at("2026-12-01T00:00:00Z")),
            ..Filter::default()
        };
        assert_eq!(count(&forwarded), 3);
        let until = Filter {
            until: Some(at("2026-11-30T02:00:00Z")),
            ..Filter::default()
        };
        assert_eq!(count(&until), 2, "until is exclusive");
        let model = Filter {
            model: Some(globset::Glob::new("claude-*").unwrap().compile_matcher()),
            ..Filter::default()
        };
        assert_eq!(count(&model), 1);
        let upstream = Filter {
            upstream: Some("API.openai.com".into()),
            ..Filter::default()
        };
        assert_eq!(count(&upstream), 9);
    }

    #[test]
    fn times_are_read_as_instants_days_or_spans_ago() {
        let now = at("2026-12-01T15:30:00Z");
        assert_eq!(parse_time("24h", now).unwrap(), at("2026-11-30T15:30:00Z"));
        assert_eq!(parse_time("7d", now).unwrap(), at("2026-11-24T15:30:00Z"));
        assert_eq!(
            parse_time("today", now).unwrap(),
            at("2026-12-01T00:00:00Z")
        );
        assert_eq!(
            parse_time("yesterday", now).unwrap(),
            at("2026-11-30T00:00:00Z")
        );
        assert_eq!(
            parse_time("2026-11-02", now).unwrap(),
            at("2026-11-02T00:00:00Z")
        );
        assert_eq!(
            parse_time("2026-11-02T08:00:00+01:00", now).unwrap(),
            at("2026-11-02T07:00:00Z")
        );
        let error = parse_time("last tuesday", now).unwrap_err().to_string();
        assert!(error.contains("expected a time"), "{error}");
    }
}
