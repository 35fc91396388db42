//! Where the daemon's connections are served: one single-threaded tokio
//! runtime per CPU ("lanes"), each connection wholly on one of them.
//!
//! On a work-stealing runtime the two halves of a request (the agent's
//! connection task and the pooled upstream connection's task) wake each
//! other across threads, and idle workers are woken to steal: measured on
//! the deployed path (`cargo xtask bench deployed`), that cost about a sixth
//! of the CPU of each request. On a lane, a connection, the upstream
//! connections it uses (pooled per lane, see `upstream::UpstreamClients`)
//! and their tasks share one thread, as an nginx worker's do. The accept
//! loop stays on the daemon's main runtime and deals connections out in
//! turn; what is shared (policy, budgets, audit, quarantines) is shared
//! across lanes as it was across workers.
//!
//! Tests and the gateway serve on whatever runtime they run (no lanes).

use std::{
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
};

use tokio::{runtime::Handle, sync::oneshot};

pub struct Lanes {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped with the lanes: each lane's thread then drops its runtime
    /// (cancelling what still runs there) and ends.
    _stops: Vec<oneshot::Sender<()>>,
}

impl Lanes {
    /// Starts `count` lanes (at least one), each a thread with its own
    /// current-thread runtime.
    pub fn start(count: usize) -> std::io::Result<Lanes> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            // The thread logs where its creator logs.
            let dispatch = tracing::dispatcher::get_default(Clone::clone);
            std::thread::Builder::new()
                .name(format!("warrant-lane-{index}"))
                .spawn(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        let _ = runtime.block_on(stopped);
                    });
                })?;
        }
        Ok(Lanes {
            handles,
            next: AtomicUsize::new(0),
            _stops: stops,
        })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `connection` on the next lane in turn.
    pub fn spawn<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[index].spawn(connection);
    }

    /// How many lanes a daemon runs: one per CPU, or TOKIO_WORKER_THREADS
    /// (tokio's own setting for its worker count) when set.
    pub fn default_count() -> usize {
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}
