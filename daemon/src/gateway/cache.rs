//! Verified instance evidence, reused.
//!
//! A node sends the same evidence with every statement until its metadata
//! refresh fetches new evidence, and checking it costs an RSA signature (and
//! for azure a PKCS#7 chain). So a verification that succeeded is kept,
//! keyed by the node key and a hash of the evidence (either changed: a
//! miss), until the verification's own `valid_until`: the evidence's
//! freshness window (`max_age_secs`) and never past its expiry
//! (`enroll::EnrolledInstance::valid_until`). Refused evidence is never
//! kept, so a refusal is decided afresh each time. The cache belongs to one
//! `Verifier`, rebuilt with each configuration generation: changed trust or
//! scope is never answered from it. What it saves is the signature check
//! only: the enrollment pin (`pins`) and everything about the statement are
//! checked on every request.
//!
//! Bounded: a full cache drops what has expired, and if still full keeps
//! nothing new (the evidence is then verified each time, as without it).

use std::{collections::HashMap, sync::Mutex};

use sha2::{Digest, Sha256};

use super::enroll::EnrolledInstance;
use crate::attest::instance::Evidence;

/// Verifications kept at most: one per node (a node refreshes its evidence
/// every few minutes), for fleets of some thousands of nodes per gateway.
pub const EVIDENCE_CACHE_CAPACITY: usize = 4096;

type Key = ([u8; 32], [u8; 32]);

pub struct EvidenceCache {
    entries: Mutex<HashMap<Key, EnrolledInstance>>,
    capacity: usize,
}

impl Default for EvidenceCache {
    fn default() -> Self {
        EvidenceCache::with_capacity(EVIDENCE_CACHE_CAPACITY)
    }
}

impl EvidenceCache {
    pub fn with_capacity(capacity: usize) -> EvidenceCache {
        EvidenceCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The verification of `evidence` for `node_key`, if one is kept and
    /// still valid at unix time `now`.
    pub fn get(
        &self,
        node_key: &[u8; 32],
        evidence: &Evidence,
        now: i64,
    ) -> Option<EnrolledInstance> {
        let key = (*node_key, digest(evidence)?);
        let entries = self.entries.lock().ok()?;
        entries.get(&key).filter(|e| now < e.valid_until).cloned()
    }

    /// Keeps a successful verification (at unix time `now`) until its
    /// `valid_until`.
    pub fn insert(
        &self,
        node_key: &[u8; 32],
        evidence: &Evidence,
        verified: &EnrolledInstance,
        now: i64,
    ) {
        let (Some(hash), Ok(mut entries)) = (digest(evidence), self.entries.lock()) else {
            return;
        };
        if now >= verified.valid_until {
            return;
        }
        let key = (*node_key, hash);
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| now < e.valid_until);
            if entries.len() >= self.capacity {
                return;
            }
        }
        entries.insert(key, verified.clone());
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SHA-256 of the evidence as a node sends it (every field, tagged by
/// provider).
fn digest(evidence: &Evidence) -> Option<[u8; 32]> {
    let bytes = serde_json::to_vec(evidence).ok()?;
    Some(Sha256::digest(bytes).into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gateway::InstanceFacts;

    fn enrolled(valid_until: i64) -> EnrolledInstance {
        EnrolledInstance {
            name: "aws:1/i-1".into(),
            facts: InstanceFacts::default(),
            launch: Some(5),
            valid_until,
        }
    }

    fn evidence(signature: &str) -> Evidence {
        Evidence::AwsDocument {
            document: "{}".into(),
            signature: signature.into(),
        }
    }

    #[test]
    fn a_verification_is_reused_until_it_expires() {
        let cache = EvidenceCache::default();
        let node = [1; 32];
        assert!(cache.get(&node, &evidence("s"), 100).is_none());
        cache.insert(&node, &evidence("s"), &enrolled(200), 100);
        assert_eq!(
            cache.get(&node, &evidence("s"), 199).unwrap().name,
            "aws:1/i-1"
        );
        assert!(cache.get(&node, &evidence("s"), 200).is_none());
        // Already past its validity: not kept at all.
        cache.insert(&node, &evidence("t"), &enrolled(200), 200);
        assert!(cache.get(&node, &evidence("t"), 150).is_none());
    }

    #[test]
    fn another_key_or_changed_evidence_misses() {
        let cache = EvidenceCache::default();
        cache.insert(&[1; 32], &evidence("s"), &enrolled(200), 100);
        assert!(cache.get(&[2; 32], &evidence("s"), 150).is_none());
        assert!(cache.get(&[1; 32], &evidence("s2"), 150).is_none());
        let other_provider = Evidence::AzureAttested {
            document: "{}".into(),
        };
        assert!(cache.get(&[1; 32], &other_provider, 150).is_none());
        assert!(cache.get(&[1; 32], &evidence("s"), 150).is_some());
    }

    #[test]
    fn a_full_cache_drops_the_expired_then_keeps_nothing_new() {
        let cache = EvidenceCache::with_capacity(2);
        cache.insert(&[1; 32], &evidence("a"), &enrolled(150), 100);
        cache.insert(&[2; 32], &evidence("b"), &enrolled(300), 100);
        // At 200 the first has expired: its room is taken.
        cache.insert(&[3; 32], &evidence("c"), &enrolled(300), 200);
        assert!(cache.get(&[3; 32], &evidence("c"), 200).is_some());
        cache.insert(&[4; 32], &evidence("d"), &enrolled(300), 200);
        assert!(cache.get(&[4; 32], &evidence("d"), 200).is_none());
        assert_eq!(cache.len(), 2);
    }
}
