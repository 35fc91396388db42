//! A real redis-server on a free loopback port (no persistence), stopped on
//! drop. Without redis-server on PATH the test is skipped, or fails where
//! prerequisites are required (see [`crate::prereq`]).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use crate::prereq::{self, Need};

pub struct RedisServer {
    child: Child,
    pub url: String,
}

impl RedisServer {
    /// None when redis-server is missing and the test is to be skipped.
    pub fn start() -> Option<RedisServer> {
        if !prereq::require(&[Need::Program("redis-server")]) {
            return None;
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Readiness: the server says so on stdout.
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => break,
                Some(Ok(_)) => {}
                _ => panic!("redis-server exited before it was ready"),
            }
        }
        // Keep draining so that the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Some(RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
