//! The replay cache: each node statement's nonce is accepted once.
//!
//! A statement is only good for `max_statement_age_secs` (plus the clock
//! skew), so a nonce need only be remembered that long: older statements
//! are refused by their date. Where the nonces live decides which gateways
//! see a replay: in memory, one gateway; in Redis (with `[usage] ledger =
//! "redis"`, the store the gateways already share for budgets), every
//! gateway behind the load balancer, so that a statement accepted by one is
//! refused by the others. `SET key 1 NX PX ttl` is atomic on the server:
//! two gateways racing on one nonce cannot both win.
//!
//! A store that cannot answer refuses (the request gets a 503): a replay
//! that cannot be ruled out is not let through.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Mutex,
    time::{Duration, Instant},
};

use redis::aio::MultiplexedConnection;

/// Nonces kept in memory at most: a statement lives about a minute, so this
/// is some 15,000 forwarded requests per second per gateway. Beyond it new
/// statements are refused rather than old nonces forgotten early.
pub const MEMORY_CAPACITY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the replay cache is full ({0} nonces within their lifetime)")]
    Full(usize),
    #[error("the replay cache (redis) cannot be reached: {0}")]
    Unreachable(String),
}

pub type NonceFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, ReplayError>> + Send + 'a>>;

/// Where nonces are remembered.
pub trait NonceStore: Send + Sync + 'static {
    /// True the first time `key` is seen within `ttl`; false for a replay.
    fn first_use<'a>(&'a self, key: &'a str, ttl: Duration) -> NonceFuture<'a>;
}

/// One gateway's nonces.
pub struct MemoryNonces {
    seen: Mutex<HashMap<String, Instant>>,
    capacity: usize,
}

impl Default for MemoryNonces {
    fn default() -> Self {
        MemoryNonces::with_capacity(MEMORY_CAPACITY)
    }
}

impl MemoryNonces {
    pub fn with_capacity(capacity: usize) -> MemoryNonces {
        MemoryNonces {
            seen: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn check(&self, key: &str, ttl: Duration) -> Result<bool, ReplayError> {
        let now = Instant::now();
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| ReplayError::Unreachable("lock poisoned".to_owned()))?;
        if let Some(until) = seen.get(key)
            && *until > now
        {
            return Ok(false);
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, until| *until > now);
            if seen.len() >= self.capacity {
                return Err(ReplayError::Full(seen.len()));
            }
        }
        seen.insert(key.to_owned(), now + ttl);
        Ok(true)
    }
}

impl NonceStore for MemoryNonces {
    fn first_use<'a>(&'a self, key: &'a str, ttl: Duration) -> NonceFuture<'a> {
        Box::pin(async move { self.check(key, ttl) })
    }
}

/// A lazily made, shared connection to the Redis the gateways use (the
/// replay cache, enrollment pins), every command bounded by a timeout; a
/// connection that failed is forgotten, so the next command reconnects.
pub(crate) struct SharedRedis {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

impl SharedRedis {
    /// Connects lazily (at the first command), like the ledger.
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<SharedRedis, redis::RedisError> {
        Ok(SharedRedis {
            client: redis::Client::open(url)?,
            conn: tokio::sync::Mutex::new(None),
            timeout,
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, RedisDown> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
        let conn =
            tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection())
                .await
                .map_err(|_| RedisDown("connect timed out".to_owned()))?
                .map_err(|e| RedisDown(e.to_string()))?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `cmd` (a command or an invoked script); the error says why it
    /// got no answer.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisDown> {
        let mut conn = self.connection().await?;
        let error = match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        *self.conn.lock().await = None;
        Err(RedisDown(error))
    }
}

/// Redis gave no answer: why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RedisDown(pub(crate) String);

/// Nonces shared by every gateway using one Redis.
pub struct RedisNonces {
    redis: SharedRedis,
}

impl RedisNonces {
    /// Connects lazily (at the first statement), like the ledger.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisNonces, redis::RedisError> {
        Ok(RedisNonces {
            redis: SharedRedis::new(url, timeout)?,
        })
    }

    async fn set_once(&self, key: &str, ttl: Duration) -> Result<bool, ReplayError> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("warrant:nonce:{key}"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(millis);
        // "OK" when set; nil when the key existed.
        let set: Option<String> = self
            .redis
            .query(&cmd)
            .await
            .map_err(|e| ReplayError::Unreachable(e.0))?;
        Ok(set.is_some())
    }
}

impl NonceStore for RedisNonces {
    fn first_use<'a>(&'a self, key: &'a str, ttl: Duration) -> NonceFuture<'a> {
        Box::pin(self.set_once(key, ttl))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_nonce_is_accepted_once_within_its_lifetime() {
        let store = MemoryNonces::default();
        let ttl = Duration::from_secs(60);
        assert!(store.first_use("node:a", ttl).await.unwrap());
        assert!(!store.first_use("node:a", ttl).await.unwrap());
        assert!(store.first_use("node:b", ttl).await.unwrap());
    }

    #[tokio::test]
    async fn expired_nonces_make_room_and_a_full_cache_refuses() {
        let store = MemoryNonces::with_capacity(2);
        assert!(store.first_use("a", Duration::ZERO).await.unwrap());
        assert!(store.first_use("b", Duration::from_secs(60)).await.unwrap());
        // "a" has expired: its room is taken.
        assert!(store.first_use("c", Duration::from_secs(60)).await.unwrap());
        assert!(matches!(
            store.first_use("d", Duration::from_secs(60)).await,
            Err(ReplayError::Full(2))
        ));
    }
}
