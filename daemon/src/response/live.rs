//! The registry of live agent connections, so that a quarantine can close
//! them at once and `warrant status` can show them.
//!
//! Each accepted connection is registered with its Origin; its workload and
//! attestation are filled in by the proxy once a request on it has been
//! identified. A
//! connection's task waits on [`LiveConnection::closed`] beside the
//! connection itself, and drops it (closing the socket, mid-stream if need
//! be) when asked to close.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{audit::AttestationSummary, origin::Origin};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionKind {
    /// Accepted; the first bytes are not read yet.
    Pending,
    /// TLS terminated by warrant for a configured upstream.
    Intercepted,
    /// TLS to a host that is not configured: spliced untouched.
    Passthrough,
    /// Plain HTTP.
    Plain,
}

pub struct LiveConnection {
    pub id: u64,
    pub origin: Origin,
    pub since: jiff::Timestamp,
    state: Mutex<State>,
    requests: AtomicU64,
    close: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    kind: Option<ConnectionKind>,
    upstream: Option<String>,
    workload: Option<String>,
    attestation: Option<AttestationSummary>,
}

/// What `warrant status` shows of one connection.
/// A live connection as `warrant status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub id: u64,
    pub tgid: u32,
    pub uid: u32,
    pub original_dst: std::net::SocketAddr,
    pub since: jiff::Timestamp,
    pub kind: ConnectionKind,
    pub upstream: Option<String>,
    pub workload: Option<String>,
    pub requests: u64,
}

impl LiveConnection {
    pub fn set_kind(&self, kind: ConnectionKind, upstream: Option<&str>) {
        if let Ok(mut state) = self.state.lock() {
            state.kind = Some(kind);
            state.upstream = upstream.map(str::to_owned);
        }
    }

    /// The attested identity behind this connection (from its requests).
    pub fn set_identity(&self, workload: Option<&str>, attestation: &AttestationSummary) {
        if let Ok(mut state) = self.state.lock() {
            state.workload = workload.map(str::to_owned);
            state.attestation = Some(attestation.clone());
        }
    }

    pub fn workload(&self) -> Option<String> {
        self.state.lock().ok()?.workload.clone()
    }

    pub fn attestation(&self) -> Option<AttestationSummary> {
        self.state.lock().ok()?.attestation.clone()
    }

    pub fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks the connection's task to drop the connection now.
    pub fn close(&self) {
        self.close.send_replace(true);
    }

    /// Resolves once [`LiveConnection::close`] was called.
    pub async fn closed(&self) {
        let mut rx = self.close.subscribe();
        // Err: the sender is gone, which cannot happen while self lives.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    pub fn info(&self) -> ConnectionInfo {
        let state = self.state.lock().ok();
        let state = state.as_deref();
        ConnectionInfo {
            id: self.id,
            tgid: self.origin.tgid,
            uid: self.origin.uid,
            original_dst: self.origin.original_dst,
            since: self.since,
            kind: state
                .and_then(|s| s.kind)
                .unwrap_or(ConnectionKind::Pending),
            upstream: state.and_then(|s| s.upstream.clone()),
            workload: state.and_then(|s| s.workload.clone()),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
pub struct LiveConnections {
    next: AtomicU64,
    all: Mutex<BTreeMap<u64, Arc<LiveConnection>>>,
}

/// Unregisters its connection when dropped (the connection's task ended).
pub struct Registration {
    registry: Arc<LiveConnections>,
    pub connection: Arc<LiveConnection>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut all) = self.registry.all.lock() {
            all.remove(&self.connection.id);
        }
        self.gauge.dec();
    }
}

impl LiveConnections {
    pub fn register(
        self: &Arc<Self>,
        origin: Origin,
        gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (close, _) = watch::channel(false);
        let connection = Arc::new(LiveConnection {
            id,
            origin,
            since: jiff::Timestamp::now(),
            state: Mutex::new(State::default()),
            requests: AtomicU64::new(0),
            close,
        });
        if let Ok(mut all) = self.all.lock() {
            all.insert(id, connection.clone());
        }
        gauge.inc();
        Registration {
            registry: self.clone(),
            connection,
            gauge,
        }
    }

    pub fn snapshot(&self) -> Vec<Arc<LiveConnection>> {
        self.all
            .lock()
            .map(|all| all.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Closes every connection of `workload`; returns how many.
    pub fn close_workload(&self, workload: &str) -> usize {
        self.close_where(|c| c.workload().as_deref() == Some(workload))
    }

    /// Closes every connection of process `tgid`; returns how many.
    pub fn close_pid(&self, tgid: u32) -> usize {
        self.close_where(|c| c.origin.tgid == tgid)
    }

    fn close_where(&self, matches: impl Fn(&LiveConnection) -> bool) -> usize {
        let mut closed = 0;
        for connection in self.snapshot() {
            if matches(&connection) {
                connection.close();
                closed += 1;
            }
        }
        closed
    }
}
