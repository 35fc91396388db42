//! The clients, run as separate processes through `World::client`, and
//! their results. Each checks its own error counts: a bench whose requests
//! fail measures nothing, so any error, timeout or non-2xx answer fails
//! the bench with the client's output (the proxies' logs follow it).

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    process::{Child, ChildStdin, ChildStdout, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::world::{HOST, REQUEST_BODY, Target, World};

/// wrk: HTTP/1.1 keep-alive load.
pub struct Wrk {
    pub connections: u32,
    pub duration: Duration,
    /// None: POST the chat request to /v1/chat/completions; Some(path):
    /// GET it (the SSE stream).
    pub get: Option<&'static str>,
}

#[derive(Clone, Copy, Debug)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub bytes: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.seconds
    }
}

/// wrk to the end of its run.
pub fn wrk(world: &World, target: Target, spec: &Wrk) -> Result<WrkResult> {
    let run = WrkRun::start(world, target, spec)?;
    let output = run.child.wait_with_output().context("waiting for wrk")?;
    wrk_result(target, &output)
}

/// A wrk run in the background (the soak samples RSS meanwhile).
pub struct WrkRun {
    child: Child,
    target: Target,
}

impl WrkRun {
    pub fn start(world: &World, target: Target, spec: &Wrk) -> Result<WrkRun> {
        let (method, path, body) = match spec.get {
            Some(path) => ("GET", path, String::new()),
            None => (
                "POST",
                "/v1/chat/completions",
                format!(
                    "wrk.body = [[{REQUEST_BODY}]]\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
                ),
            ),
        };
        // wrk's Lua hooks: the request, and a done() that prints the
        // summary as one JSON line (latency percentiles in µs, errors).
        let script = world
            .dir
            .join(format!("wrk-{}-{method}.lua", target.label()));
        fs::write(
            &script,
            format!(
                r#"wrk.method = "{method}"
{body}wrk.headers["Authorization"] = "{auth}"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_RESULT {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%f,"p99_us":%f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#,
                auth = world.auth(target),
            ),
        )?;
        let threads = spec.connections.min(2);
        let child = world
            .client(target, "wrk".as_ref())
            .arg(format!("-t{threads}"))
            .arg(format!("-c{}", spec.connections))
            .arg(format!("-d{}s", spec.duration.as_secs().max(1)))
            .args(["--timeout", "10s", "-s"])
            .arg(&script)
            .arg(format!("https://{HOST}{path}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting wrk")?;
        Ok(WrkRun { child, target })
    }

    /// The result once wrk has exited; None while it runs.
    pub fn try_finish(&mut self) -> Result<Option<WrkResult>> {
        if self.child.try_wait()?.is_none() {
            return Ok(None);
        }
        // Its output is a few lines: the pipes never filled.
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_end(&mut stdout)?;
        }
        if let Some(mut err) = self.child.stderr.take() {
            err.read_to_end(&mut stderr)?;
        }
        let status = self.child.wait()?;
        wrk_result(
            self.target,
            &Output {
                status,
                stdout,
                stderr,
            },
        )
        .map(Some)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wrk_result(target: Target, output: &Output) -> Result<WrkResult> {
    let text = checked("wrk", target, output)?;
    let json: Value = text
        .lines()
        .find_map(|l| l.strip_prefix("WRK_RESULT "))
        .map(serde_json::from_str)
        .transpose()?
        .with_context(|| format!("wrk ({}) printed no result:\n{text}", target.label()))?;
    let count = |k: &str| json[k].as_u64().unwrap_or(u64::MAX);
    let errors: Vec<String> = ["connect", "read", "write", "timeout", "status"]
        .iter()
        .filter(|k| count(k) > 0)
        .map(|k| format!("{} {k}", count(k)))
        .collect();
    let result = WrkResult {
        requests: count("requests"),
        seconds: count("duration_us") as f64 / 1e6,
        bytes: count("bytes"),
        p50_ms: json["p50_us"].as_f64().unwrap_or(f64::NAN) / 1e3,
        p99_ms: json["p99_us"].as_f64().unwrap_or(f64::NAN) / 1e3,
    };
    if !errors.is_empty() || result.requests == 0 || result.requests == u64::MAX {
        bail!(
            "wrk through {}: {} requests, errors: {} (status = answers >= 400)\n{text}",
            target.label(),
            result.requests,
            errors.join(", ")
        );
    }
    Ok(result)
}

/// h2load: HTTP/2 load, `connections` × `streams` concurrent requests.
pub struct H2Load {
    pub connections: u32,
    pub streams: u32,
    pub duration: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct H2Result {
    pub requests: u64,
    pub seconds: f64,
}

pub fn h2load(world: &World, target: Target, spec: &H2Load) -> Result<H2Result> {
    let output = world
        .client(target, "h2load".as_ref())
        .arg(format!("-c{}", spec.connections))
        .arg(format!("-m{}", spec.streams))
        .arg(format!("-t{}", spec.connections.min(2)))
        .arg(format!("-D{}", spec.duration.as_secs().max(1)))
        .arg("-H")
        .arg(format!("authorization: {}", world.auth(target)))
        .args(["-H", "content-type: application/json", "-d"])
        .arg(world.dir.join("body.json"))
        .arg(format!("https://{HOST}/v1/chat/completions"))
        .output()
        .context("running h2load")?;
    let text = checked("h2load", target, &output)?;
    parse_h2load(&text).with_context(|| format!("h2load through {}:\n{text}", target.label()))
}

/// Reads h2load's summary and refuses a run with failures or non-2xx.
fn parse_h2load(text: &str) -> Result<H2Result> {
    // "finished in 8.00s, 23456.12 req/s, 3.45MB/s"
    let seconds = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split('s').next())
        .and_then(|s| s.parse::<f64>().ok())
        .context("no 'finished in' line")?;
    // "requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout"
    let counts = |prefix: &str| -> Result<Vec<(String, u64)>> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .with_context(|| format!("no {prefix:?} line"))?;
        line.split(',')
            .map(|part| {
                let mut words = part.split_whitespace();
                let n = words.next().and_then(|n| n.parse().ok());
                let what = words.next().map(str::to_owned);
                n.zip(what)
                    .with_context(|| format!("malformed {prefix:?} line"))
            })
            .map(|r| r.map(|(n, w)| (w, n)))
            .collect()
    };
    let requests = counts("requests: ")?;
    let status = counts("status codes: ")?;
    let get = |list: &[(String, u64)], what: &str| {
        list.iter().find(|(w, _)| w == what).map_or(0, |(_, n)| *n)
    };
    let succeeded = get(&requests, "succeeded");
    let bad = get(&requests, "failed")
        + get(&requests, "errored")
        + get(&requests, "timeout")
        + get(&status, "3xx")
        + get(&status, "4xx")
        + get(&status, "5xx");
    if bad > 0 || succeeded == 0 {
        bail!("{succeeded} requests succeeded, {bad} failed, errored, timed out or not 2xx");
    }
    Ok(H2Result {
        requests: succeeded,
        seconds,
    })
}

/// Latency of new connections (TCP + TLS + one request), from bench_client.
#[derive(Clone, Copy, Debug)]
pub struct ConnectResult {
    pub p50_ms: f64,
}

pub fn new_connections(world: &World, target: Target, n: usize) -> Result<ConnectResult> {
    let output = world
        .bench_client(target, "connect")
        .arg("--n")
        .arg(n.to_string())
        .output()
        .context("running bench_client connect")?;
    let text = checked("bench_client connect", target, &output)?;
    let json: Value = serde_json::from_str(text.trim())
        .with_context(|| format!("bench_client printed {text:?}"))?;
    Ok(ConnectResult {
        p50_ms: json["p50_ms"].as_f64().context("no p50_ms")?,
    })
}

/// A bench_client holding idle connections to one target.
pub struct IdleHolder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    target: Target,
}

impl IdleHolder {
    pub fn start(world: &World, target: Target) -> Result<IdleHolder> {
        let mut child = world
            .bench_client(target, "idle")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting bench_client idle")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(IdleHolder {
            child,
            stdin,
            stdout,
            target,
        })
    }

    fn command(&mut self, line: &str) -> Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut reply = String::new();
        self.stdout.read_line(&mut reply)?;
        if reply.is_empty() {
            let status = self.child.wait()?;
            bail!(
                "bench_client idle ({}) exited ({status}) on {line:?}; its error is above",
                self.target.label()
            );
        }
        Ok(reply.trim().to_owned())
    }

    /// Grows the pool to `n` connections; fails unless all are alive.
    pub fn open(&mut self, n: usize) -> Result<()> {
        let reply = self.command(&format!("open {n}"))?;
        let alive = reply
            .strip_prefix("open ")
            .and_then(|a| a.parse::<usize>().ok())
            .with_context(|| format!("bench_client answered {reply:?}"))?;
        if alive != n {
            bail!(
                "{} closed {} of {n} idle connections while they were opened",
                self.target.label(),
                n - alive.min(n)
            );
        }
        Ok(())
    }

    /// Connections the server has not closed.
    pub fn alive(&mut self) -> Result<usize> {
        let reply = self.command("status")?;
        reply
            .strip_prefix("alive ")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("bench_client answered {reply:?}"))
    }

    /// Closes every connection; returns when the client has seen them end.
    pub fn close(&mut self) -> Result<()> {
        match self.command("close")?.as_str() {
            "closed" => Ok(()),
            other => bail!("bench_client answered {other:?}"),
        }
    }
}

impl Drop for IdleHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stdout of a finished client, or an error with its output.
fn checked(tool: &str, target: Target, output: &Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{tool} through {} failed ({}):\n{stdout}{}",
            target.label(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H2LOAD_OK: &str = "starting benchmark...
finished in 2.00s, 20145.50 req/s, 4.92MB/s
requests: 40291 total, 40291 started, 40291 done, 40291 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 40291 2xx, 0 3xx, 0 4xx, 0 5xx
";

    #[test]
    fn h2load_summary_is_read() {
        let r = parse_h2load(H2LOAD_OK).unwrap();
        assert_eq!(r.requests, 40291);
        assert_eq!(r.seconds, 2.0);
    }

    #[test]
    fn h2load_non_2xx_or_failures_fail_the_bench() {
        let non_2xx = H2LOAD_OK.replace("40291 2xx, 0 3xx, 0 4xx", "40290 2xx, 0 3xx, 1 4xx");
        assert!(parse_h2load(&non_2xx).is_err());
        let failed = H2LOAD_OK.replace("0 failed", "3 failed");
        assert!(parse_h2load(&failed).is_err());
        assert!(parse_h2load("finished in 2.00s").is_err());
    }
}
