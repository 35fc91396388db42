//! The log lines of one test, and only of that test.
//!
//! Tests run in parallel threads of one process. A process-wide log buffer
//! lets one test's line satisfy another's assertion, so each test captures
//! its own: [`Logs::capture`] makes a subscriber for this test and sets it
//! as the default of the calling thread (the test's thread, where a
//! `#[tokio::test]` runtime runs every task it spawns). A test whose code
//! runs on other threads too (a multi-thread runtime, the blocking pool)
//! builds its runtime with [`Logs::runtime`], whose every thread logs here.
//!
//! Every test that starts an injector should capture: its secret scan
//! ([`Logs::assert_none_of`]) then reads what that injector logged.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use tracing::{Dispatch, dispatcher::DefaultGuard};

/// The logs of one test. Dropping it stops the capture on this thread.
pub struct Logs {
    buffer: Arc<Mutex<Vec<u8>>>,
    dispatch: Dispatch,
    _guard: DefaultGuard,
}

impl Logs {
    /// Captures every event (all levels) logged on this thread from now on.
    pub fn capture() -> Logs {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Buffer(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let dispatch = Dispatch::new(subscriber);
        let guard = tracing::dispatcher::set_default(&dispatch);
        Logs {
            buffer,
            dispatch,
            _guard: guard,
        }
    }

    /// A multi-thread runtime (`workers` worker threads) whose every thread,
    /// workers and blocking pool, logs into this capture.
    pub fn runtime(&self, workers: usize) -> tokio::runtime::Runtime {
        let dispatch = self.dispatch.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .on_thread_start(move || {
                // The thread ends with the runtime, which ends with the test.
                std::mem::forget(tracing::dispatcher::set_default(&dispatch));
            })
            .build()
            .unwrap()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    /// Panics if any of `secrets` was logged (without printing it).
    pub fn assert_none_of(&self, secrets: &[&str]) {
        let text = self.text();
        for (i, secret) in secrets.iter().enumerate() {
            assert!(
                !text.contains(secret),
                "secret #{i} appeared in this test's logs"
            );
        }
    }
}

#[derive(Clone)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
