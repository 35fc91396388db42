//! The Redis ledger: the same bucketed windows as `window`, kept in one Redis
//! hash per budget key and series, so that every host running a workload
//! draws on one budget.
//!
//! Admission is one Lua script, run atomically by the server: it drops
//! buckets out of the window, sums the rest, checks every limit and adds the
//! reservation only if all fit. Settling adds the difference with HINCRBY
//! (atomic on its own). Bucket numbers come from the host's clock: hosts
//! must keep NTP time, and a skew of S seconds shifts a host's view of the
//! window by S. A host that dies with requests in flight leaves them charged
//! as reserved. Keys expire a window after their last write.

use std::time::Duration;

use redis::{Script, aio::MultiplexedConnection};
use tokio::sync::Mutex;

use super::{
    ledger::{OverLimit, Placed},
    window::{Amounts, BUCKETS, SERIES, Series},
};

/// KEYS: the three hashes (requests, tokens, cost).
/// ARGV per series s (4 each): bucket now, bucket seconds, want, limit (-1: none).
/// Returns {0} when reserved, else {series index + 1, used, oldest bucket
/// that must leave for the request to fit (-1: never)}.
const RESERVE: &str = r"
local n = tonumber(ARGV[13])
local now = {}
for s = 1, 3 do
  local base = (s - 1) * 4
  local bucket = tonumber(ARGV[base + 1])
  local want = tonumber(ARGV[base + 3])
  local limit = tonumber(ARGV[base + 4])
  now[s] = bucket
  local h = redis.call('HGETALL', KEYS[s])
  local used = 0
  local live = {}
  for i = 1, #h, 2 do
    local b = tonumber(h[i])
    local v = tonumber(h[i + 1])
    if b < bucket - n then
      redis.call('HDEL', KEYS[s], h[i])
    elseif b <= bucket and v > 0 then
      used = used + v
      table.insert(live, {b, v})
    end
  end
  if limit >= 0 and used + want > limit then
    local at = -1
    if want <= limit then
      table.sort(live, function(x, y) return x[1] < y[1] end)
      local excess = used + want - limit
      local freed = 0
      for _, bv in ipairs(live) do
        freed = freed + bv[2]
        if freed >= excess then at = bv[1]; break end
      end
    end
    return {s, used, at}
  end
end
for s = 1, 3 do
  local base = (s - 1) * 4
  redis.call('HINCRBY', KEYS[s], now[s], ARGV[base + 3])
  redis.call('EXPIRE', KEYS[s], tonumber(ARGV[base + 2]) * (n + 2))
end
return {0}
";

#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct Unreachable(pub String);

/// `[usage] redis_url` is not a URL the client can use.
#[derive(Debug, thiserror::Error)]
#[error("redis_url: {0}")]
pub struct RedisUrlError(#[source] pub redis::RedisError);

pub struct RedisLedger {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    script: Script,
    timeout: Duration,
}

impl RedisLedger {
    /// Parses the URL; connects lazily (the first admission), so that the
    /// daemon starts while Redis is down.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisLedger, RedisUrlError> {
        let client = redis::Client::open(url).map_err(RedisUrlError)?;
        Ok(RedisLedger {
            client,
            conn: Mutex::new(None),
            script: Script::new(RESERVE),
            timeout,
        })
    }

    fn hash(key: &str, series: Series) -> String {
        // The braces keep a key's three hashes in one Redis Cluster slot.
        format!("warrant:budget:{{{key}}}:{}", series.key())
    }

    async fn connection(&self) -> Result<MultiplexedConnection, Unreachable> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
        let conn =
            tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection())
                .await
                .map_err(|_| Unreachable("connect timed out".to_owned()))?
                .map_err(|e| Unreachable(e.to_string()))?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets a connection that failed, so that the next call reconnects.
    async fn failed(&self, error: String) -> Unreachable {
        *self.conn.lock().await = None;
        Unreachable(error)
    }

    pub async fn reserve(
        &self,
        key: &str,
        now_secs: i64,
        want: Amounts,
        limits: [Option<u64>; 3],
    ) -> Result<Result<Placed, OverLimit>, Unreachable> {
        let mut conn = self.connection().await?;
        let buckets = SERIES.map(|s| s.bucket_at(now_secs));
        let mut call = self.script.prepare_invoke();
        for series in SERIES {
            call.key(Self::hash(key, series));
        }
        for series in SERIES {
            let i = series.index();
            call.arg(buckets[i])
                .arg(series.bucket_secs())
                .arg(want[i])
                .arg(limits[i].map_or(-1, |l| l as i64));
        }
        call.arg(BUCKETS);
        let answer: Vec<i64> =
            match tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => return Err(self.failed(e.to_string()).await),
                Err(_) => return Err(self.failed("timed out".to_owned()).await),
            };
        match answer.as_slice() {
            [0] => Ok(Ok(Placed { id: 0, buckets })),
            [s, used, at] => {
                let series = usize::try_from(*s - 1)
                    .ok()
                    .and_then(|i| SERIES.get(i).copied())
                    .ok_or_else(|| Unreachable(format!("unexpected script answer {answer:?}")))?;
                let i = series.index();
                Ok(Err(OverLimit {
                    series,
                    limit: limits[i].unwrap_or(0),
                    used: (*used).max(0) as u64,
                    retry_after: (*at >= 0)
                        .then(|| super::window::retry_after(series, *at, now_secs)),
                }))
            }
            _ => Err(Unreachable(format!("unexpected script answer {answer:?}"))),
        }
    }

    pub async fn settle(
        &self,
        key: &str,
        placed: Placed,
        delta: [i64; 3],
    ) -> Result<(), Unreachable> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        for series in SERIES {
            let i = series.index();
            if delta[i] != 0 {
                pipe.hincr(Self::hash(key, series), placed.buckets[i], delta[i])
                    .ignore();
            }
        }
        match tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.failed(e.to_string()).await),
            Err(_) => Err(self.failed("timed out".to_owned()).await),
        }
    }

    /// Whether the server answers now.
    pub async fn ping(&self) -> bool {
        let Ok(mut conn) = self.connection().await else {
            return false;
        };
        matches!(
            tokio::time::timeout(
                self.timeout,
                redis::cmd("PING").query_async::<String>(&mut conn)
            )
            .await,
            Ok(Ok(_))
        )
    }
}
