//! The control socket: a unix socket for `warrant status`, `revoke`,
//! `restore`, `reload` and `explain`.
//!
//! # Access
//! The socket (`[control] socket`, default `/run/warrant/control.sock`) is
//! owned by root with mode 0600, or 0660 and group `[control] admin_group`.
//! Every connection's peer credentials (SO_PEERCRED) are checked as well:
//! uid 0, or a member of the admin group (primary or supplementary). Anyone
//! else gets one error response (`"permission denied: ..."`) and the
//! connection is closed.
//!
//! # Protocol
//! One JSON object per line in each direction; one request per connection
//! is the usual use, but a client may send several. Requests:
//!
//! ```text
//! {"cmd":"status"}
//! {"cmd":"revoke","workload":"support-agent","for_secs":3600,"reason":"..."}
//! {"cmd":"revoke","pid":1234}
//! {"cmd":"restore","workload":"support-agent"}
//! {"cmd":"restore","pid":1234}
//! {"cmd":"reload"}
//! {"cmd":"explain","pid":1234}
//! {"cmd":"pins"}
//! {"cmd":"unpin","instance":"aws:123456789012/i-0abc"}
//! {"cmd":"unpin","instance":"aws:123456789012/i-0abc","to":"ed25519:<hex>"}
//! ```
//!
//! `revoke` needs exactly one of `workload` and `pid`; `for_secs` (default:
//! until restored) and `reason` are optional. Answers are
//! `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`. Results:
//! - status: a [`status::Status`] (`{"version", "connections":[...],
//!   "workloads":{NAME:{"connections","requests"}}, "credentials":[...],
//!   "budgets":{..., "lines":[...]}, "instance":{...}, "tagging":{...},
//!   "quarantines":[...], "audit":{...}, "kernel":{"release", "features",
//!   "hooks"}}`; every field in the README's "Status fields")
//! - revoke: `{"target":..., "closed":N, "until":TIME|null}`
//! - restore: `{"target":..., "restored":true|false}`
//! - reload: whatever the daemon reports (the configuration is validated)
//! - explain: `{"text":"..."}`, the attestation and the workload match.
//! - pins (a gateway): `{"pins":[{"instance","key","launch","pinned_at"}]}`,
//!   the node keys pinned to the instances that enrolled them
//!   (`gateway::pins`)
//! - unpin (a gateway): `{"instance":..., "released":{"key",...}|null,
//!   "to":KEY|null}`; without `to`, the next key to enroll as that instance
//!   is pinned to it; with `to`, that key is pinned now (for the pinned
//!   launch; an instance not pinned stays so).

pub mod client;
pub mod status;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    attest::InstanceState,
    audit::{AuditRecord, RecordKind},
    credentials::CredentialStatus,
    gateway::PinStore,
    response::{Responder, Target},
    usage::BudgetStatus,
};

/// One request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    Revoke {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workload: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Restore {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workload: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    Reload,
    Explain {
        pid: u32,
        /// "METHOD URL [model=NAME]": also show what policy would decide.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// A gateway's enrollment pins.
    Pins,
    /// Releases the enrollment pin of an instance ("<provider>:<scope>/<id>"),
    /// or with `to` ("ed25519:<hex>"), pins that key instead.
    Unpin {
        instance: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
}

/// Why a control request was not carried out; the client prints it.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "permission denied: the warrant control socket is for root{} (you are uid {uid})",
        if *.admin_group { " and the configured admin group" } else { "" }
    )]
    PermissionDenied { uid: u32, admin_group: bool },
    #[error("{0} is not available")]
    NotAvailable(&'static str),
    #[error("give exactly one of workload and pid")]
    BadTarget,
    #[error("{0:?} is not a node key: expected ed25519:<64 hex digits>")]
    BadNodeKey(String),
    #[error("{what} failed: {source}")]
    Interrupted {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// The daemon's own error for the request: a reload's configuration
    /// error, an explain's attestation error.
    #[error(transparent)]
    Daemon(Box<dyn std::error::Error + Send + Sync>),
}

impl RequestError {
    pub fn daemon(error: impl std::error::Error + Send + Sync + 'static) -> RequestError {
        RequestError::Daemon(Box::new(error))
    }
}

/// The daemon parts the control socket reports on or acts through, beside
/// the responder. Every method has a neutral default, so tests and partial
/// daemons implement only what they have.
pub trait ControlBackend: Send + Sync + 'static {
    /// Credentials with their expiry and fingerprint, never their value.
    fn credentials(&self) -> Vec<CredentialStatus> {
        Vec::new()
    }
    fn instance(&self) -> Option<InstanceState> {
        None
    }
    /// Metering counters and one line per budget of the rules in force.
    fn budgets(&self) -> Option<BudgetStatus> {
        None
    }
    /// Whether every cgroup the selectors name is tagged (see
    /// `redirect::tagging::TaggerStatus`).
    fn tagging(&self) -> Option<crate::redirect::tagging::TaggerStatus> {
        None
    }
    /// The kernel's eBPF features and the hooks attached
    /// (`redirect::features`): `{"release", "features": [...], "hooks": {...}}`.
    fn kernel(&self) -> Option<Value> {
        None
    }
    /// Re-reads the configuration. Blocking is fine (runs off the runtime).
    fn reload(&self) -> Result<Value, RequestError> {
        Err(RequestError::NotAvailable("reload"))
    }
    /// The attestation of `pid` and its workload match, as text. Blocking
    /// is fine (runs off the runtime).
    fn explain(&self, pid: u32) -> Result<String, RequestError> {
        let _ = pid;
        Err(RequestError::NotAvailable("explain"))
    }
    /// As `explain`, plus the policy decision for `request` ("METHOD URL
    /// [model=NAME]"), without sending anything.
    fn explain_request(&self, pid: u32, request: &str) -> Result<String, RequestError> {
        let _ = (pid, request);
        Err(RequestError::NotAvailable("explain --request"))
    }
    /// A gateway's enrollment pins (`gateway::pins`).
    fn pins(&self) -> Option<Arc<dyn PinStore>> {
        None
    }
}

/// A fresh 0700 directory beside `path`, for binding the socket out of reach.
fn private_staging_dir(path: &Path) -> std::io::Result<PathBuf> {
    let parent = path.parent().unwrap_or(Path::new("."));
    for attempt in 0..100u32 {
        let dir = parent.join(format!(".control-staging-{}-{attempt}", std::process::id()));
        match std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)
        {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "cannot create a staging directory for the control socket",
    ))
}

/// A backend with nothing beyond the responder.
pub struct NoBackend;
impl ControlBackend for NoBackend {}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin group {0:?} does not exist")]
    NoSuchGroup(String),
}

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    admin_gid: Option<u32>,
    responder: Arc<Responder>,
    backend: Arc<dyn ControlBackend>,
}

impl ControlServer {
    /// Binds the socket at `path` (a stale socket file is replaced), root
    /// owned, mode 0600, or 0660 with group `admin_group`.
    pub fn bind(
        path: &Path,
        admin_group: Option<&str>,
        responder: Arc<Responder>,
        backend: Arc<dyn ControlBackend>,
    ) -> Result<ControlServer, ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        let admin_gid = match admin_group {
            Some(name) => Some(
                nix::unistd::Group::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| ControlError::NoSuchGroup(name.to_owned()))?
                    .gid
                    .as_raw(),
            ),
            None => None,
        };
        if let Some(dir) = path.parent() {
            // 0755: the socket's own mode is what guards it; the directory
            // must be traversable for an admin group.
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o755,
            )
            .create(dir)
            .map_err(io)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        // Bound inside a private (0700) directory, given its mode and group
        // there, then renamed into place: there is no moment at which it is
        // open to others. (Not a umask: that is process-wide, and would
        // change the mode of files other threads create meanwhile.)
        let staging = private_staging_dir(path).map_err(io)?;
        let staged = staging.join("control.sock");
        let bound = (|| {
            let listener = UnixListener::bind(&staged)?;
            let mode = if let Some(gid) = admin_gid {
                std::os::unix::fs::chown(&staged, None, Some(gid))?;
                0o660
            } else {
                0o600
            };
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
            std::fs::rename(&staged, path)?;
            Ok(listener)
        })();
        let _ = std::fs::remove_dir(&staging);
        let listener = bound.map_err(io)?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            admin_gid,
            responder,
            backend,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until the task is dropped.
    pub async fn serve(self) {
        let this = Arc::new(self);
        loop {
            let stream = match this.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = this.clone();
            tokio::spawn(async move {
                if let Err(error) = this.connection(stream).await {
                    tracing::debug!(%error, "control connection ended with an error");
                }
            });
        }
    }

    async fn connection(&self, stream: UnixStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let peer = write.as_ref().peer_cred()?;
        if let Err(refusal) = authorize(peer.uid(), peer.gid(), peer.pid(), self.admin_gid) {
            tracing::warn!(uid = peer.uid(), pid = ?peer.pid(), "control socket: {refusal}");
            let answer = json!({"ok": false, "error": refusal.to_string()});
            write.write_all(format!("{answer}\n").as_bytes()).await?;
            return Ok(());
        }
        let actor = format!("operator (uid {})", peer.uid());
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await? {
            if line.trim().is_empty() {
                continue;
            }
            let answer = match serde_json::from_str::<ControlRequest>(&line) {
                Ok(request) => match self.handle(request, &actor).await {
                    Ok(result) => json!({"ok": true, "result": result}),
                    Err(error) => json!({"ok": false, "error": error.to_string()}),
                },
                Err(error) => json!({"ok": false, "error": format!("bad request: {error}")}),
            };
            write.write_all(format!("{answer}\n").as_bytes()).await?;
        }
        Ok(())
    }

    async fn handle(&self, request: ControlRequest, actor: &str) -> Result<Value, RequestError> {
        match request {
            ControlRequest::Status => {
                let status = status::status(&self.responder, self.backend.as_ref());
                serde_json::to_value(status).map_err(RequestError::daemon)
            }
            ControlRequest::Revoke {
                workload,
                pid,
                for_secs,
                reason,
            } => {
                let target = target(workload, pid)?;
                let duration = for_secs.map(Duration::from_secs);
                let reason = reason.unwrap_or_else(|| "revoked by an operator".to_owned());
                let closed = self
                    .responder
                    .quarantine(target.clone(), &reason, actor, duration);
                let until = self
                    .responder
                    .quarantines()
                    .list(jiff::Timestamp::now())
                    .into_iter()
                    .find(|q| q.target == target)
                    .and_then(|q| q.until);
                Ok(json!({"target": target, "closed": closed, "until": until}))
            }
            ControlRequest::Restore { workload, pid } => {
                let target = target(workload, pid)?;
                let restored = self.responder.restore(&target, actor).is_some();
                Ok(json!({"target": target, "restored": restored}))
            }
            ControlRequest::Reload => {
                let backend = self.backend.clone();
                tokio::task::spawn_blocking(move || backend.reload())
                    .await
                    .map_err(|source| RequestError::Interrupted {
                        what: "reload",
                        source,
                    })?
            }
            ControlRequest::Explain { pid, request } => {
                let backend = self.backend.clone();
                let text = tokio::task::spawn_blocking(move || match request {
                    Some(request) => backend.explain_request(pid, &request),
                    None => backend.explain(pid),
                })
                .await
                .map_err(|source| RequestError::Interrupted {
                    what: "explain",
                    source,
                })??;
                Ok(json!({"text": text}))
            }
            ControlRequest::Pins => {
                let pins = self
                    .pin_store()?
                    .list()
                    .await
                    .map_err(RequestError::daemon)?;
                Ok(json!({ "pins": pins }))
            }
            ControlRequest::Unpin { instance, to } => self.unpin(&instance, to, actor).await,
        }
    }

    fn pin_store(&self) -> Result<Arc<dyn PinStore>, RequestError> {
        self.backend
            .pins()
            .ok_or(RequestError::NotAvailable("pins (a gateway's only)"))
    }

    /// Releases an instance's pin (or pins the key `to` instead), with an
    /// audit record of who did.
    async fn unpin(
        &self,
        instance: &str,
        to: Option<String>,
        actor: &str,
    ) -> Result<Value, RequestError> {
        let store = self.pin_store()?;
        let to = to
            .map(|key| {
                crate::config::parse_node_key(&key)
                    .map(|bytes| format!("ed25519:{}", hex::encode(bytes)))
                    .ok_or(RequestError::BadNodeKey(key))
            })
            .transpose()?;
        let released = match &to {
            None => store.release(instance).await,
            Some(key) => {
                let now = jiff::Timestamp::now().as_second();
                store.repin(instance, key.clone(), now).await
            }
        }
        .map_err(RequestError::daemon)?;
        if let Some(pin) = &released {
            let then = to.as_ref().map_or_else(
                || "the next key to enroll as it is pinned".to_owned(),
                |key| format!("pinned to {key} by the operator"),
            );
            let message = format!(
                "enrollment pin of {instance} to {} released: {then}",
                pin.key
            );
            tracing::warn!(instance, actor, "{message}");
            let mut record = AuditRecord::new(RecordKind::Daemon);
            record.actor = Some(actor.to_owned());
            record.message = Some(message);
            self.responder.audit().record(&record);
        }
        let to = released.as_ref().and(to);
        Ok(json!({"instance": instance, "released": released, "to": to}))
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn target(workload: Option<String>, pid: Option<u32>) -> Result<Target, RequestError> {
    match (workload, pid) {
        (Some(name), None) if !name.is_empty() => Ok(Target::Workload(name)),
        (None, Some(pid)) if pid > 0 => Ok(Target::Pid(pid)),
        _ => Err(RequestError::BadTarget),
    }
}

/// Whether a peer may use the control socket: root, or a member of the admin
/// group. Supplementary groups are read from /proc/PID/status, since
/// SO_PEERCRED carries only the primary group.
pub fn authorize(
    uid: u32,
    gid: u32,
    pid: Option<i32>,
    admin_gid: Option<u32>,
) -> Result<(), RequestError> {
    if uid == 0 {
        return Ok(());
    }
    if let Some(admin) = admin_gid
        && (gid == admin || pid.is_some_and(|pid| supplementary_groups(pid).contains(&admin)))
    {
        return Ok(());
    }
    Err(RequestError::PermissionDenied {
        uid,
        admin_group: admin_gid.is_some(),
    })
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_or_the_admin_group_is_authorized() {
        assert!(authorize(0, 0, None, None).is_ok());
        let refused = authorize(1000, 1000, None, None).unwrap_err().to_string();
        assert!(refused.starts_with("permission denied"), "{refused}");
        assert!(authorize(1000, 50, None, Some(50)).is_ok());
        assert!(authorize(1000, 1000, None, Some(50)).is_err());
    }

    #[test]
    fn requests_parse_from_their_documented_json() {
        let r: ControlRequest =
            serde_json::from_str(r#"{"cmd":"revoke","workload":"a","for_secs":60}"#)
                .unwrap_or(ControlRequest::Status);
        assert!(matches!(
            r,
            ControlRequest::Revoke {
                workload: Some(_),
                for_secs: Some(60),
                ..
            }
        ));
        assert!(target(Some("a".into()), Some(1)).is_err());
        assert!(target(None, None).is_err());
    }
}
