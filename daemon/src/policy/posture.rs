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
use toml::Spanned;

use crate::{
    config::{ConfigError, ConfigErrorKind, PostureConfig, PostureSourceKind, Source},
    duration::DurationError,
};

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

/// What a `[[posture]]` section gets wrong (its name is `config`'s).
#[derive(Debug, thiserror::Error)]
pub enum PostureConfigError {
    #[error("source \"file\" needs `path`")]
    FileWithoutPath,
    #[error("source \"command\" needs `command = [\"program\", \"arg\", ...]`")]
    CommandWithoutArgv,
    #[error(transparent)]
    Duration(#[from] DurationError),
}

/// Why a posture source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is larger than {MAX_OUTPUT} bytes", path.display())]
    FileTooLarge { path: PathBuf },
    #[error("empty command")]
    EmptyCommand,
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
    #[error("{program}: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} exited with {status}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
    },
    #[error("{program} printed more than {MAX_OUTPUT} bytes")]
    OutputTooLarge { program: String },
}

/// Why a check's latest result is not a pass.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("status {status:?}{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Status {
        status: String,
        detail: Option<String>,
    },
    #[error("unreadable result: {0}")]
    Unreadable(#[source] serde_json::Error),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// Why a rule's posture factor fails.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PostureFailure {
    #[error("unknown posture check")]
    Unknown,
    #[error("posture store poisoned")]
    Poisoned,
    #[error("posture {name:?}: no result yet")]
    NoResult { name: String },
    #[error("posture {name:?} failing: {reason}")]
    Failing {
        name: String,
        #[source]
        reason: Arc<ResultError>,
    },
    #[error("posture {name:?} stale: checked {age}s ago, max_age {max_age}s")]
    Stale {
        name: String,
        age: i64,
        max_age: i64,
    },
}

#[derive(Debug, Clone)]
struct PostureResult {
    outcome: Result<Timestamp, Arc<ResultError>>,
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

    /// Compiles `[[posture]]` into checks (none read yet: `refresh_all`
    /// and `spawn_refresher` do that).
    pub fn compile(
        configs: &[PostureConfig],
        source: &Source,
    ) -> Result<PostureStore, ConfigError> {
        let checks = configs
            .iter()
            .map(|config| compile_check(config, source))
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
            Ok(report) => Err(Arc::new(ResultError::Status {
                status: report.status,
                detail: report.detail,
            })),
            Err(e) => Err(Arc::new(ResultError::Unreadable(e))),
        };
        self.store(index, PostureResult { outcome });
    }

    /// Stores a failure to read check `index`'s source.
    pub fn record_error(&self, index: usize, reason: SourceError) {
        self.store(
            index,
            PostureResult {
                outcome: Err(Arc::new(reason.into())),
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
    pub fn check(&self, index: usize, now: Timestamp) -> Result<(), PostureFailure> {
        let check = self.checks.get(index).ok_or(PostureFailure::Unknown)?;
        let results = self.results.read().map_err(|_| PostureFailure::Poisoned)?;
        let name = || check.name.clone();
        let result = results
            .get(index)
            .and_then(Option::as_ref)
            .ok_or_else(|| PostureFailure::NoResult { name: name() })?;
        let checked_at = result
            .outcome
            .as_ref()
            .map_err(|reason| PostureFailure::Failing {
                name: name(),
                reason: reason.clone(),
            })?;
        let age = now.as_second() - checked_at.as_second();
        let max_age = i64::try_from(check.max_age.as_secs()).unwrap_or(i64::MAX);
        if age > max_age {
            return Err(PostureFailure::Stale {
                name: name(),
                age,
                max_age,
            });
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

async fn read_source(check: &PostureCheck) -> Result<Vec<u8>, SourceError> {
    match &check.source {
        PostureSource::File(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|source| SourceError::Read {
                    path: path.clone(),
                    source,
                })?;
            if bytes.len() > MAX_OUTPUT {
                return Err(SourceError::FileTooLarge { path: path.clone() });
            }
            Ok(bytes)
        }
        PostureSource::Command(argv) => {
            let (program, args) = argv.split_first().ok_or(SourceError::EmptyCommand)?;
            let named = || program.clone();
            let child = tokio::process::Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| SourceError::Spawn {
                    program: named(),
                    source,
                })?;
            let output = tokio::time::timeout(check.timeout, child.wait_with_output())
                .await
                .map_err(|_| SourceError::Timeout {
                    program: named(),
                    timeout: check.timeout,
                })?
                .map_err(|source| SourceError::Wait {
                    program: named(),
                    source,
                })?;
            if !output.status.success() {
                return Err(SourceError::Failed {
                    program: named(),
                    status: output.status,
                });
            }
            if output.stdout.len() > MAX_OUTPUT {
                return Err(SourceError::OutputTooLarge { program: named() });
            }
            Ok(output.stdout)
        }
    }
}

/// One `[[posture]]` compiled; errors point into `source`.
fn compile_check(config: &PostureConfig, source: &Source) -> Result<PostureCheck, ConfigError> {
    let invalid = |span: std::ops::Range<usize>, problem: PostureConfigError| {
        source.error_at(&span, ConfigErrorKind::Invalid, problem)
    };
    let duration = |value: &Option<Spanned<String>>, default: Duration| match value {
        Some(text) => {
            crate::duration::parse(text.get_ref()).map_err(|e| invalid(text.span(), e.into()))
        }
        None => Ok(default),
    };
    let max_age = duration(&config.max_age, DEFAULT_MAX_AGE)?;
    let interval = duration(&config.interval, DEFAULT_INTERVAL)?;
    let timeout = duration(&config.timeout, DEFAULT_TIMEOUT)?;
    let kind = match config.source.get_ref() {
        PostureSourceKind::File => {
            PostureSource::File(config.path.clone().ok_or_else(|| {
                invalid(config.source.span(), PostureConfigError::FileWithoutPath)
            })?)
        }
        PostureSourceKind::Command => match &config.command {
            Some(argv) if !argv.is_empty() => PostureSource::Command(argv.clone()),
            _ => {
                return Err(invalid(
                    config.source.span(),
                    PostureConfigError::CommandWithoutArgv,
                ));
            }
        },
    };
    Ok(PostureCheck {
        name: config.name.get_ref().clone(),
        source: kind,
        max_age,
        interval,
        timeout,
    })
}
