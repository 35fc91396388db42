//! Leaf certificates minted per SNI on demand and cached as ready rustls
//! server configurations, so a handshake after the first costs one map lookup.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rustls::{
    ServerConfig,
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
};

use super::{ALPN, LEAF_CACHE_TTL, LocalCa, TlsError, provider};

pub struct LeafCache {
    ca: Arc<LocalCa>,
    ttl: Duration,
    configs: Mutex<HashMap<String, (Instant, Arc<ServerConfig>)>>,
}

impl LeafCache {
    pub fn new(ca: Arc<LocalCa>) -> LeafCache {
        LeafCache::with_ttl(ca, LEAF_CACHE_TTL)
    }

    pub fn with_ttl(ca: Arc<LocalCa>, ttl: Duration) -> LeafCache {
        LeafCache {
            ca,
            ttl,
            configs: Mutex::new(HashMap::new()),
        }
    }

    pub fn ca(&self) -> &Arc<LocalCa> {
        &self.ca
    }

    /// The server configuration presenting a leaf for `sni`, minted if none
    /// is cached or the cached one is older than the TTL. Only hosts the CA
    /// permits get one (the cache cannot grow with arbitrary SNIs).
    pub fn server_config(&self, sni: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let host = sni.to_ascii_lowercase();
        if let Ok(configs) = self.configs.lock()
            && let Some((minted, config)) = configs.get(&host)
            && minted.elapsed() < self.ttl
        {
            return Ok(config.clone());
        }
        // Minted outside the lock: two racing handshakes may both mint, which
        // is harmless, while holding the lock would stall every handshake.
        let (cert, key) = self.ca.mint(&host)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )?;
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        let config = Arc::new(config);
        if let Ok(mut configs) = self.configs.lock() {
            configs.insert(host, (Instant::now(), config.clone()));
        }
        Ok(config)
    }
}
