//! Who opened a redirected connection, and where it was going.
//!
//! The proxy asks an [`OriginSource`] for the Origin of each accepted socket.
//! In production that is the eBPF map filled by the connect and sockops
//! programs (`redirect::EbpfOrigins`); tests of the proxy, attestation and
//! policy layers swap in [`StaticOrigins`] and run without privileges (the
//! shape linkerd2-proxy uses for its original-destination lookup).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Mutex,
};

/// The Origin of one redirected connection, as the kernel recorded it at
/// connect() time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The address and port the agent dialled.
    pub original_dst: SocketAddr,
    /// The thread and the process (tgid) that called connect().
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The cgroup (v2) of the calling task.
    pub cgroup_id: u64,
    /// The process's exec generation at connect time; compared with the
    /// current one to detect a program that exec'd since.
    pub exec_gen: u64,
    /// CLOCK_BOOTTIME of the connect in ns; a process that started later is not
    /// the one that connected (its pid was reused).
    pub connect_boot_ns: u64,
}

impl Origin {
    /// Converts the kernel's record.
    pub fn from_kernel(raw: &warrant_common::Origin) -> Origin {
        Origin {
            original_dst: SocketAddr::new(ip_from_words(raw.dst_addr), raw.dst_port),
            pid: raw.pid,
            tgid: raw.tgid,
            uid: raw.uid,
            gid: raw.gid,
            cgroup_id: raw.cgroup_id,
            exec_gen: raw.exec_gen,
            connect_boot_ns: raw.connect_boot_ns,
        }
    }
}

/// Network-order words to an address; v4-mapped addresses become IPv4.
pub fn ip_from_words(words: [u32; 4]) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(octets);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// An address as network-order words, IPv4 stored v4-mapped.
pub fn words_from_ip(ip: IpAddr) -> [u32; 4] {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let octets = v6.octets();
    let mut words = [0u32; 4];
    for (word, chunk) in words.iter_mut().zip(octets.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words
}

/// An IPv4 address as one network-order word.
pub fn word_from_ipv4(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Finds the Origin of an accepted connection from its peer address.
pub trait OriginSource: Send + Sync + 'static {
    /// Takes the Origin recorded for the connection whose peer (the agent's
    /// local address) is `peer`. `None` means no tagged process made it: the
    /// caller must refuse the connection.
    fn take(&self, peer: SocketAddr) -> Option<Origin>;
}

/// An in-memory OriginSource for tests: Origins registered by peer address.
#[derive(Default)]
pub struct StaticOrigins {
    by_peer: Mutex<HashMap<SocketAddr, Origin>>,
}

impl StaticOrigins {
    pub fn insert(&self, peer: SocketAddr, origin: Origin) {
        if let Ok(mut map) = self.by_peer.lock() {
            map.insert(peer, origin);
        }
    }
}

impl OriginSource for StaticOrigins {
    fn take(&self, peer: SocketAddr) -> Option<Origin> {
        self.by_peer.lock().ok()?.remove(&normalize(peer))
    }
}

/// Peer addresses of a dual-stack listener arrive v4-mapped; compare as IPv4.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn addresses_round_trip_through_kernel_words() {
        for ip in ["10.1.2.3", "::1", "2001:db8::7", "127.0.0.9"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_from_words(words_from_ip(ip)), ip);
        }
        let v4: Ipv4Addr = "127.0.0.1".parse().unwrap();
        assert_eq!(words_from_ip(IpAddr::V4(v4))[3], word_from_ipv4(v4));
    }

    #[test]
    fn static_origins_are_taken_once_and_match_v4_mapped_peers() {
        let origins = StaticOrigins::default();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let origin = Origin {
            original_dst: "1.2.3.4:443".parse().unwrap(),
            pid: 1,
            tgid: 1,
            uid: 0,
            gid: 0,
            cgroup_id: 7,
            exec_gen: 0,
            connect_boot_ns: 0,
        };
        origins.insert(peer, origin);
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        assert_eq!(origins.take(mapped), Some(origin));
        assert_eq!(origins.take(peer), None);
    }
}
