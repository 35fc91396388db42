//! Enrollment pins: trust on first use for instance evidence that does not
//! bind the node's key (`enroll`).
//!
//! An AWS instance identity document names no key, has no nonce and is the
//! same for the instance's whole launch, so anyone holding a copy could
//! enroll any key as that instance. As Vault's AWS "ec2" auth method does,
//! the gateway pins the first key that enrolls with an instance's verified
//! evidence to that instance; another key presenting the same instance's
//! evidence is refused until the operator releases the pin (`warrant pins`,
//! `warrant unpin`, over the control socket). An Azure document binds the
//! key by a 10-digit nonce only (33 bits), so its instances are pinned too.
//!
//! A pin records the launch the evidence came from (AWS: the document's
//! `pendingTime`; Azure has none): a later launch of the same instance id
//! (a stop and start, a relaunch) is another enrollment and pins again,
//! while evidence of an earlier launch than the pinned one is refused, so a
//! copy of an old document is worthless once the instance has moved on.
//!
//! Pins must be shared by every gateway and survive restarts: in Redis when
//! the gateways share a Redis ledger (the store of the replay cache and the
//! budgets), else in a file in the gateway's state directory (written whole
//! and renamed into place, mode 0600). The decision is one function
//! ([`decide`]); a Redis store applies it with a compare-and-set, so that
//! two gateways racing on one instance cannot both pin it. A store that
//! cannot answer refuses (503): an enrollment that cannot be checked
//! against its pin is not let through.

use std::{
    collections::BTreeMap,
    future::Future,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    pin::Pin as Boxed,
    sync::Mutex,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{enroll::EnrolledInstance, replay::SharedRedis};

/// The file pins are kept in (in the gateway's state directory) when there
/// is no Redis ledger.
pub const PINS_FILE: &str = "enrollment-pins.json";

/// The key an instance is pinned to, and the launch it was pinned for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// "ed25519:<hex>": the node key.
    pub key: String,
    /// When the pinned launch began (unix seconds; AWS `pendingTime`), 0
    /// when the evidence does not say (Azure).
    pub launch: i64,
    /// When the pin was made (unix seconds).
    pub pinned_at: i64,
}

/// One pin, for listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinEntry {
    /// "<provider>:<scope>/<instance id>", as the node is named.
    pub instance: String,
    #[serde(flatten)]
    pub pin: Pin,
}

/// Why a key may not enroll as an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// The instance (this launch of it) is pinned to another key.
    OtherKey(Pin),
    /// The evidence is of an earlier launch than the pinned one.
    Superseded(Pin),
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("the enrollment pins (redis) cannot be reached: {0}")]
    Unreachable(String),
    #[error("the enrollment pins file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the enrollment pins file {path} is not what warrant writes: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the enrollment pin of {0} is not what warrant writes")]
    CorruptEntry(String),
    #[error("the enrollment pin of {0} kept changing under this gateway")]
    Contended(String),
    #[error("the pin store's lock is poisoned")]
    Poisoned,
}

/// What to do with a key presenting an instance's evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Already pinned to this key for this launch.
    Keep,
    /// Pin it (no pin yet, or the evidence is of a later launch).
    Write,
    /// Refuse.
    Refuse(Held),
}

/// The one decision every store applies.
pub fn decide(existing: Option<&Pin>, wanted: &Pin) -> Decision {
    match existing {
        None => Decision::Write,
        Some(pin) if wanted.launch < pin.launch => Decision::Refuse(Held::Superseded(pin.clone())),
        Some(pin) if wanted.launch > pin.launch => Decision::Write,
        Some(pin) if pin.key == wanted.key => Decision::Keep,
        Some(pin) => Decision::Refuse(Held::OtherKey(pin.clone())),
    }
}

pub type PinFuture<'a, T> = Boxed<Box<dyn Future<Output = Result<T, PinError>> + Send + 'a>>;

/// Where pins are kept.
pub trait PinStore: Send + Sync + 'static {
    /// Pins `instance` to `wanted` if [`decide`] says so; Ok(Err) says why
    /// the key may not enroll as it.
    fn claim<'a>(&'a self, instance: &'a str, wanted: Pin) -> PinFuture<'a, Result<(), Held>>;
    /// Every pin, by instance.
    fn list(&self) -> PinFuture<'_, Vec<PinEntry>>;
    /// Forgets the pin of `instance`: the next key to enroll as it is
    /// pinned. The pin released, if there was one.
    fn release<'a>(&'a self, instance: &'a str) -> PinFuture<'a, Option<Pin>>;
    /// Pins `instance`, pinned now, to `key` instead, for the same launch
    /// (the operator's choice: no race for the pin). The pin replaced;
    /// None when there was none (nothing is pinned then).
    fn repin<'a>(&'a self, instance: &'a str, key: String, now: i64) -> PinFuture<'a, Option<Pin>>;
}

/// The pin that replaces `old` for `key`, made at `now`.
fn replacing(old: &Pin, key: String, now: i64) -> Pin {
    Pin {
        key,
        launch: old.launch,
        pinned_at: now,
    }
}

/// One gateway's pins, in a file of its state directory.
pub struct FilePins {
    path: PathBuf,
    pins: Mutex<BTreeMap<String, Pin>>,
}

impl FilePins {
    /// Reads the pins `path` holds (none when it does not exist yet).
    pub fn open(path: &Path) -> Result<FilePins, PinError> {
        let pins = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| PinError::Corrupt {
                path: path.to_owned(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(PinError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(FilePins {
            path: path.to_owned(),
            pins: Mutex::new(pins),
        })
    }

    /// Writes `pins` whole beside the file, 0600, synced, then renames it
    /// over the file: a crash leaves the old pins or the new, never half.
    fn save(&self, pins: &BTreeMap<String, Pin>) -> Result<(), PinError> {
        let io = |source| PinError::Io {
            path: self.path.clone(),
            source,
        };
        let staged = self.path.with_extension("json.new");
        let text = serde_json::to_vec_pretty(pins).map_err(|source| PinError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        let _ = std::fs::remove_file(&staged);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)
            .map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&staged, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent()
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn claim_now(&self, instance: &str, wanted: Pin) -> Result<Result<(), Held>, PinError> {
        let mut pins = self.pins.lock().map_err(|_| PinError::Poisoned)?;
        match decide(pins.get(instance), &wanted) {
            Decision::Keep => Ok(Ok(())),
            Decision::Refuse(held) => Ok(Err(held)),
            Decision::Write => {
                let mut next = pins.clone();
                next.insert(instance.to_owned(), wanted);
                self.save(&next)?;
                *pins = next;
                Ok(Ok(()))
            }
        }
    }

    fn release_now(&self, instance: &str) -> Result<Option<Pin>, PinError> {
        let mut pins = self.pins.lock().map_err(|_| PinError::Poisoned)?;
        if !pins.contains_key(instance) {
            return Ok(None);
        }
        let mut next = pins.clone();
        let released = next.remove(instance);
        self.save(&next)?;
        *pins = next;
        Ok(released)
    }

    fn repin_now(&self, instance: &str, key: String, now: i64) -> Result<Option<Pin>, PinError> {
        let mut pins = self.pins.lock().map_err(|_| PinError::Poisoned)?;
        let Some(old) = pins.get(instance).cloned() else {
            return Ok(None);
        };
        let mut next = pins.clone();
        next.insert(instance.to_owned(), replacing(&old, key, now));
        self.save(&next)?;
        *pins = next;
        Ok(Some(old))
    }
}

impl PinStore for FilePins {
    fn claim<'a>(&'a self, instance: &'a str, wanted: Pin) -> PinFuture<'a, Result<(), Held>> {
        Box::pin(async move { self.claim_now(instance, wanted) })
    }

    fn list(&self) -> PinFuture<'_, Vec<PinEntry>> {
        Box::pin(async move {
            let pins = self.pins.lock().map_err(|_| PinError::Poisoned)?;
            Ok(pins
                .iter()
                .map(|(instance, pin)| PinEntry {
                    instance: instance.clone(),
                    pin: pin.clone(),
                })
                .collect())
        })
    }

    fn release<'a>(&'a self, instance: &'a str) -> PinFuture<'a, Option<Pin>> {
        Box::pin(async move { self.release_now(instance) })
    }

    fn repin<'a>(&'a self, instance: &'a str, key: String, now: i64) -> PinFuture<'a, Option<Pin>> {
        Box::pin(async move { self.repin_now(instance, key, now) })
    }
}

/// Why a node key may not enroll as the instance whose evidence it
/// presented (a 403; 503 when the pins cannot answer).
#[derive(Debug, thiserror::Error)]
pub enum PinRefusal {
    #[error(
        "node key {key} may not enroll as {instance}: that instance is pinned to another key, {pinned} (since {since}); if that key is no longer the instance's, release the pin (`warrant unpin {instance}` on a gateway)"
    )]
    OtherKey {
        key: String,
        instance: String,
        pinned: String,
        since: String,
    },
    #[error(
        "node key {key} may not enroll as {instance}: its evidence is of an earlier launch of that instance (started {launch}) than the one pinned (started {pinned_launch}): a copy of an old document"
    )]
    Superseded {
        key: String,
        instance: String,
        launch: String,
        pinned_launch: String,
    },
    #[error(
        "node key {key}: the enrollment pin of {instance} cannot be checked, so another key's claim on it cannot be ruled out: {source}"
    )]
    Store {
        key: String,
        instance: String,
        #[source]
        source: PinError,
    },
}

/// Whether the node `key` may enroll as the instance `enrolled` names: the
/// first key to do so (for this launch) is pinned to it, on every gateway
/// sharing `pins`. Evidence that binds the key itself (gcp) is not pinned.
pub async fn check(
    pins: &dyn PinStore,
    key: &[u8; 32],
    enrolled: &EnrolledInstance,
    now: i64,
) -> Result<(), PinRefusal> {
    let Some(launch) = enrolled.launch else {
        return Ok(());
    };
    let (key, instance) = (
        format!("ed25519:{}", hex::encode(key)),
        enrolled.name.clone(),
    );
    let wanted = Pin {
        key: key.clone(),
        launch,
        pinned_at: now,
    };
    let held = match pins.claim(&instance, wanted).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(held)) => held,
        Err(source) => {
            return Err(PinRefusal::Store {
                key,
                instance,
                source,
            });
        }
    };
    Err(match held {
        Held::OtherKey(pin) => PinRefusal::OtherKey {
            key,
            instance,
            pinned: pin.key,
            since: unix_time(pin.pinned_at),
        },
        Held::Superseded(pin) => PinRefusal::Superseded {
            key,
            instance,
            launch: unix_time(launch),
            pinned_launch: unix_time(pin.launch),
        },
    })
}

/// A unix time for a message.
fn unix_time(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map_or_else(|_| secs.to_string(), |t| t.to_string())
}

/// Sets KEYS[1] to ARGV[2] only if it still holds ARGV[1] ("" for none).
const COMPARE_AND_SET: &str = r"
local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[1] == '') or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Returns KEYS[1]'s value and deletes it.
const TAKE: &str = r"
local current = redis.call('GET', KEYS[1])
if current then redis.call('DEL', KEYS[1]) end
return current
";

const REDIS_PREFIX: &str = "warrant:pin:";

/// How often a claim retries a compare-and-set another gateway won.
const CLAIM_ATTEMPTS: usize = 5;

/// Pins shared by every gateway using one Redis; kept until released.
pub struct RedisPins {
    redis: SharedRedis,
}

impl RedisPins {
    /// Connects lazily (at the first enrollment), like the ledger.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisPins, redis::RedisError> {
        Ok(RedisPins {
            redis: SharedRedis::new(url, timeout)?,
        })
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, PinError> {
        self.redis
            .query(cmd)
            .await
            .map_err(|e| PinError::Unreachable(e.0))
    }

    fn parse(instance: &str, raw: &str) -> Result<Pin, PinError> {
        serde_json::from_str(raw).map_err(|_| PinError::CorruptEntry(instance.to_owned()))
    }

    /// The pin of `instance` as stored (its raw text, for the
    /// compare-and-set), and read.
    async fn get(&self, instance: &str) -> Result<Option<(String, Pin)>, PinError> {
        let raw: Option<String> = self
            .query(redis::cmd("GET").arg(format!("{REDIS_PREFIX}{instance}")))
            .await?;
        raw.map(|r| Self::parse(instance, &r).map(|pin| (r, pin)))
            .transpose()
    }

    /// Sets the pin of `instance` to `pin` if it is still `expected`.
    async fn compare_and_set(
        &self,
        instance: &str,
        expected: Option<&str>,
        pin: &Pin,
    ) -> Result<bool, PinError> {
        let value =
            serde_json::to_string(pin).map_err(|_| PinError::CorruptEntry(instance.to_owned()))?;
        let mut cas = redis::cmd("EVAL");
        cas.arg(COMPARE_AND_SET)
            .arg(1)
            .arg(format!("{REDIS_PREFIX}{instance}"))
            .arg(expected.unwrap_or(""))
            .arg(value);
        let set: i64 = self.query(&cas).await?;
        Ok(set == 1)
    }

    async fn claim_now(&self, instance: &str, wanted: Pin) -> Result<Result<(), Held>, PinError> {
        for _ in 0..CLAIM_ATTEMPTS {
            let existing = self.get(instance).await?;
            match decide(existing.as_ref().map(|(_, pin)| pin), &wanted) {
                Decision::Keep => return Ok(Ok(())),
                Decision::Refuse(held) => return Ok(Err(held)),
                Decision::Write => {}
            }
            let raw = existing.as_ref().map(|(raw, _)| raw.as_str());
            if self.compare_and_set(instance, raw, &wanted).await? {
                return Ok(Ok(()));
            }
        }
        Err(PinError::Contended(instance.to_owned()))
    }

    async fn repin_now(
        &self,
        instance: &str,
        key: String,
        now: i64,
    ) -> Result<Option<Pin>, PinError> {
        for _ in 0..CLAIM_ATTEMPTS {
            let Some((raw, old)) = self.get(instance).await? else {
                return Ok(None);
            };
            let new = replacing(&old, key.clone(), now);
            if self.compare_and_set(instance, Some(&raw), &new).await? {
                return Ok(Some(old));
            }
        }
        Err(PinError::Contended(instance.to_owned()))
    }

    async fn list_now(&self) -> Result<Vec<PinEntry>, PinError> {
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(format!("{REDIS_PREFIX}*"))
                .arg("COUNT")
                .arg(500);
            let (next, batch): (u64, Vec<String>) = self.query(&scan).await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            let raw: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
            let instance = key.trim_start_matches(REDIS_PREFIX).to_owned();
            // Released between the scan and now: not a pin any more.
            if let Some(raw) = raw {
                let pin = Self::parse(&instance, &raw)?;
                entries.push(PinEntry { instance, pin });
            }
        }
        Ok(entries)
    }

    async fn release_now(&self, instance: &str) -> Result<Option<Pin>, PinError> {
        let mut take = redis::cmd("EVAL");
        take.arg(TAKE)
            .arg(1)
            .arg(format!("{REDIS_PREFIX}{instance}"));
        let raw: Option<String> = self.query(&take).await?;
        raw.map(|r| Self::parse(instance, &r)).transpose()
    }
}

impl PinStore for RedisPins {
    fn claim<'a>(&'a self, instance: &'a str, wanted: Pin) -> PinFuture<'a, Result<(), Held>> {
        Box::pin(self.claim_now(instance, wanted))
    }

    fn list(&self) -> PinFuture<'_, Vec<PinEntry>> {
        Box::pin(self.list_now())
    }

    fn release<'a>(&'a self, instance: &'a str) -> PinFuture<'a, Option<Pin>> {
        Box::pin(self.release_now(instance))
    }

    fn repin<'a>(&'a self, instance: &'a str, key: String, now: i64) -> PinFuture<'a, Option<Pin>> {
        Box::pin(self.repin_now(instance, key, now))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pin(key: &str, launch: i64) -> Pin {
        Pin {
            key: key.into(),
            launch,
            pinned_at: 1,
        }
    }

    #[test]
    fn the_first_key_is_pinned_and_a_later_launch_pins_again() {
        assert_eq!(decide(None, &pin("a", 10)), Decision::Write);
        assert_eq!(decide(Some(&pin("a", 10)), &pin("a", 10)), Decision::Keep);
        assert_eq!(
            decide(Some(&pin("a", 10)), &pin("b", 10)),
            Decision::Refuse(Held::OtherKey(pin("a", 10)))
        );
        // A stop and start (same key) or a relaunch (any key): a new pin.
        assert_eq!(decide(Some(&pin("a", 10)), &pin("a", 20)), Decision::Write);
        assert_eq!(decide(Some(&pin("a", 10)), &pin("b", 20)), Decision::Write);
        // A copy of an earlier launch's document, whatever the key.
        assert_eq!(
            decide(Some(&pin("a", 20)), &pin("a", 10)),
            Decision::Refuse(Held::Superseded(pin("a", 20)))
        );
    }

    #[tokio::test]
    async fn a_file_store_pins_refuses_releases_and_survives_a_restart() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PINS_FILE);
        let store = FilePins::open(&path).unwrap();
        assert_eq!(
            store.claim("aws:1/i-1", pin("a", 10)).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            store.claim("aws:1/i-1", pin("a", 10)).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            store.claim("aws:1/i-1", pin("b", 10)).await.unwrap(),
            Err(Held::OtherKey(pin("a", 10)))
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A restart: the pin is read back and still refuses.
        drop(store);
        let store = FilePins::open(&path).unwrap();
        assert_eq!(
            store.claim("aws:1/i-1", pin("b", 10)).await.unwrap(),
            Err(Held::OtherKey(pin("a", 10)))
        );
        let listed = store.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].instance, "aws:1/i-1");
        assert_eq!(
            store.release("aws:1/i-1").await.unwrap(),
            Some(pin("a", 10))
        );
        assert_eq!(store.release("aws:1/i-1").await.unwrap(), None);
        assert_eq!(
            store.claim("aws:1/i-1", pin("b", 10)).await.unwrap(),
            Ok(())
        );
        let store = FilePins::open(&path).unwrap();
        assert_eq!(store.list().await.unwrap()[0].pin, pin("b", 10));
    }

    #[test]
    fn a_file_that_is_not_pins_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PINS_FILE);
        std::fs::write(&path, "not json").unwrap();
        let error = FilePins::open(&path).err().unwrap();
        assert!(error.to_string().contains(PINS_FILE), "{error}");
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error_not_a_pin() {
        // Nothing listens on port 1.
        let store = RedisPins::new("redis://127.0.0.1:1/", Duration::from_millis(500)).unwrap();
        let error = store.claim("aws:1/i-1", pin("a", 1)).await.unwrap_err();
        assert!(matches!(error, PinError::Unreachable(_)), "{error}");
    }
}
