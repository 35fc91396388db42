//! Posture signals: named checks whose latest result comes from a file or a
//! command (a vulnerability scanner's or EDR's verdict), as JSON
//! `{"status": "pass", "checked_at": "2026-01-14T08:00:00Z", "detail": "..."}`.
//!
//! A rule naming a check denies unless the latest result says "pass" and its
//! `checked_at` is younger than the check's `max_age`. A source that cannot be
//! read or parsed replaces the result, so a scanner that stops reporting
//! denies at the latest when its last result goes stale, and a broken file
//! denies at once.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{Arc, RwLock},
    time::Duration,
};

use jiff::Timestamp;
use serde::Deserialize;

use crate::config::{ConfigError, Location, PostureConfig};

/// A result older than this denies, unless `max_age` says otherwise.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// How often sources are read. A minute keeps a failing check from lingering
/// while costing nothing noticeable.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// How long a posture command may run before it counts as failing.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Posture JSON larger than this is refused.
const MAX_OUTPUT: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub enum PostureSource {
    File(PathBuf),
    Command(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct PostureCheck {
    pub name: String,
    pub source: PostureSource,
    pub max_age: Duration,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
struct PostureResult {
    outcome: Result<Timestamp, String>,
}

/// The checks and their latest results.
#[derive(Debug, Default)]
pub struct PostureStore {
    checks: Vec<PostureCheck>,
    results: RwLock<Vec<Option<PostureResult>>>,
}

#[derive(Deserialize)]
struct PostureReport {
    status: String,
    checked_at: Timestamp,
    #[serde(default)]
    detail: Option<String>,
}

impl PostureStore {
    pub fn new(checks: Vec<PostureCheck>) -> PostureStore {
        let results = RwLock::new(vec![None; checks.len()]);
        PostureStore { checks, results }
    }

    /// Builds the checks from `[[posture]]`. The config was validated, so
    /// errors here mean it was not.
    pub fn from_config(configs: &[PostureConfig]) -> Result<PostureStore, String> {
        let checks = configs
            .iter()
            .map(check_from_config)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PostureStore::new(checks))
    }

    /// The index of a named check.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.checks.iter().position(|c| c.name == name)
    }

    pub fn checks(&self) -> &[PostureCheck] {
        &self.checks
    }

    /// Stores a report (the JSON a source produced) for check `index`.
    pub fn record(&self, index: usize, json: &[u8]) {
        let outcome = match serde_json::from_slice::<PostureReport>(json) {
            Ok(report) if report.status.eq_ignore_ascii_case("pass") => Ok(report.checked_at),
            Ok(report) => Err(format!(
                "status {:?}{}",
                report.status,
                report.detail.map(|d| format!(": {d}")).unwrap_or_default()
            )),
            Err(e) => Err(format!("unreadable result: {e}")),
        };
        self.store(index, PostureResult { outcome });
    }

    /// Stores a failure to read check `index`'s source.
    pub fn record_error(&self, index: usize, reason: String) {
        self.store(
            index,
            PostureResult {
                outcome: Err(reason),
            },
        );
    }

    fn store(&self, index: usize, result: PostureResult) {
        if let Ok(mut results) = self.results.write()
            && let Some(slot) = results.get_mut(index)
        {
            *slot = Some(result);
        }
    }

    /// Whether check `index` passes at `now`; Err says why not.
    pub fn check(&self, index: usize, now: Timestamp) -> Result<(), String> {
        let check = self.checks.get(index).ok_or("unknown posture check")?;
        let results = self.results.read().map_err(|_| "posture store poisoned")?;
        let result = results
            .get(index)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("posture {:?}: no result yet", check.name))?;
        let checked_at = result
            .outcome
            .as_ref()
            .map_err(|why| format!("posture {:?} failing: {why}", check.name))?;
        let age = now.as_second() - checked_at.as_second();
        let max_age = i64::try_from(check.max_age.as_secs()).unwrap_or(i64::MAX);
        if age > max_age {
            return Err(format!(
                "posture {:?} stale: checked {}s ago, max_age {}s",
                check.name, age, max_age
            ));
        }
        Ok(())
    }

    /// Reads check `index`'s source once and records the result.
    pub async fn refresh(&self, index: usize) {
        let Some(check) = self.checks.get(index) else {
            return;
        };
        match read_source(check).await {
            Ok(bytes) => self.record(index, &bytes),
            Err(reason) => {
                tracing::warn!(check = %check.name, %reason, "posture source failed");
                self.record_error(index, reason);
            }
        }
    }

    pub async fn refresh_all(&self) {
        for index in 0..self.checks.len() {
            self.refresh(index).await;
        }
    }

    /// Reads every check at its interval, for the daemon's lifetime.
    pub fn spawn_refresher(self: Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.checks.len())
            .map(|index| {
                let store = Arc::clone(&self);
                tokio::spawn(async move {
                    let period = store.checks[index].interval.max(Duration::from_secs(1));
                    let mut ticks = tokio::time::interval(period);
                    loop {
                        ticks.tick().await;
                        store.refresh(index).await;
                    }
                })
            })
            .collect()
    }
}

async fn read_source(check: &PostureCheck) -> Result<Vec<u8>, String> {
    match &check.source {
        PostureSource::File(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if bytes.len() > MAX_OUTPUT {
                return Err(format!(
                    "{} is larger than {MAX_OUTPUT} bytes",
                    path.display()
                ));
            }
            Ok(bytes)
        }
        PostureSource::Command(argv) => {
            let (program, args) = argv.split_first().ok_or("empty command")?;
            let child = tokio::process::Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot run {program}: {e}"))?;
            let output = tokio::time::timeout(check.timeout, child.wait_with_output())
                .await
                .map_err(|_| format!("{program} did not finish within {:?}", check.timeout))?
                .map_err(|e| format!("{program}: {e}"))?;
            if !output.status.success() {
                return Err(format!("{program} exited with {}", output.status));
            }
            if output.stdout.len() > MAX_OUTPUT {
                return Err(format!("{program} printed more than {MAX_OUTPUT} bytes"));
            }
            Ok(output.stdout)
        }
    }
}

fn duration_or(
    value: &Option<toml::Spanned<String>>,
    default: Duration,
) -> Result<Duration, String> {
    value
        .as_ref()
        .map_or(Ok(default), |d| crate::duration::parse(d.get_ref()))
}

fn check_from_config(config: &PostureConfig) -> Result<PostureCheck, String> {
    let source = match config.source.get_ref().as_str() {
        "file" => PostureSource::File(config.path.clone().ok_or("source \"file\" needs `path`")?),
        "command" => {
            let argv = config.command.clone().unwrap_or_default();
            if argv.is_empty() {
                return Err(
                    "source \"command\" needs `command = [\"program\", \"arg\", ...]`".to_owned(),
                );
            }
            PostureSource::Command(argv)
        }
        other => {
            return Err(format!(
                "unknown posture source {other:?}; expected \"file\" or \"command\""
            ));
        }
    };
    Ok(PostureCheck {
        name: config.name.get_ref().clone(),
        source,
        max_age: duration_or(&config.max_age, DEFAULT_MAX_AGE)?,
        interval: duration_or(&config.interval, DEFAULT_INTERVAL)?,
        timeout: duration_or(&config.timeout, DEFAULT_TIMEOUT)?,
    })
}

/// Validation of `[[posture]]`, called from `Config::validate`.
pub fn validate(configs: &[PostureConfig], text: &str, origin: &str) -> Result<(), ConfigError> {
    let err = |span: std::ops::Range<usize>, msg: String| {
        ConfigError::new(origin, Some(Location::of(text, span.start)), msg)
    };
    let mut names = std::collections::HashSet::new();
    for config in configs {
        if !names.insert(config.name.get_ref().as_str()) {
            return Err(err(
                config.name.span(),
                format!("posture {:?} is defined twice", config.name.get_ref()),
            ));
        }
        for value in [&config.max_age, &config.interval, &config.timeout]
            .into_iter()
            .flatten()
        {
            crate::duration::parse(value.get_ref()).map_err(|e| err(value.span(), e))?;
        }
        check_from_config(config).map_err(|e| err(config.source.span(), e))?;
    }
    Ok(())
}
