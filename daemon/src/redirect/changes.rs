//! The identity-change counters, read from the daemon's own memory.
//!
//! Attestation checks on every request that the process behind a
//! connection is still the one it attested: alive (its pid not reused), on
//! the same executable (exec generation), in the same user namespace, its
//! cgroup not marked by prctl(PR_SET_MM). Done by system calls, that was a
//! readlink of /proc/PID/ns/user, a pidfd poll and two map lookups per
//! request. The eBPF programs count every event that can change one of
//! those facts (exec, new credentials, a task exiting, a prctl mark) in an
//! array the kernel lets the daemon map read-only (BPF_F_MMAPABLE): while a
//! process's counters are where they were at its last full check, nothing
//! changed, and the check is one load from memory (`attest::Attestor`).
//!
//! The counters are only an answer when every event is counted: the daemon
//! uses them only once both watch programs (credentials, exit) attached;
//! otherwise every request is checked by system calls, as before.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;
use warrant_common::{IDENTITY_CHANGES_ANY, IDENTITY_CHANGES_SLOTS, identity_change_slot};

use crate::attest::ChangeStamp;

/// The counters array, mapped read-only into this process.
pub struct IdentityChanges {
    counters: NonNull<AtomicU64>,
    len: usize,
    /// The map, kept open with the mapping (the mapping alone would keep
    /// the map alive too; this makes the owner plain).
    _map: MapData,
}

// Safety: the mapping is shared memory the kernel writes with atomic adds;
// it is only read here, through `AtomicU64`, and it stays mapped until
// `drop`. Any thread may read it.
unsafe impl Send for IdentityChanges {}
// Safety: as above: reads through atomics only.
unsafe impl Sync for IdentityChanges {}

impl IdentityChanges {
    /// Maps `map` (an array of `IDENTITY_CHANGES_SLOTS` u64 created with
    /// BPF_F_MMAPABLE) read-only.
    pub fn map(map: MapData) -> std::io::Result<IdentityChanges> {
        let len = IDENTITY_CHANGES_SLOTS as usize * std::mem::size_of::<u64>();
        let fd = map.fd().as_fd().as_raw_fd();
        // Safety: a fresh shared read-only mapping of the map's fd, of the
        // array's size; the kernel rounds it to pages and checks the size
        // against the map's. Nothing else aliases it mutably in this
        // process.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let counters = NonNull::new(address.cast::<AtomicU64>())
            .ok_or_else(|| std::io::Error::other("mmap returned a null address"))?;
        Ok(IdentityChanges {
            counters,
            len,
            _map: map,
        })
    }

    fn load(&self, slot: u32) -> u64 {
        debug_assert!(slot < IDENTITY_CHANGES_SLOTS);
        let slot = (slot % IDENTITY_CHANGES_SLOTS) as usize;
        // Safety: `slot` is within the mapped array, whose u64s are 8-byte
        // aligned (the mapping is page aligned); the kernel writes them
        // atomically. Acquire: facts read after this load are at least as
        // new as the changes it shows.
        unsafe { self.counters.add(slot).as_ref() }.load(Ordering::Acquire)
    }

    /// `tgid`'s counter and the all-processes one, now.
    pub fn stamp(&self, tgid: u32) -> ChangeStamp {
        ChangeStamp {
            process: self.load(identity_change_slot(tgid)),
            any: self.load(IDENTITY_CHANGES_ANY),
        }
    }
}

impl Drop for IdentityChanges {
    fn drop(&mut self) {
        // Safety: the mapping made in `map`, unmapped once; nothing reads
        // it afterwards (`self` is going away).
        unsafe {
            libc::munmap(self.counters.as_ptr().cast(), self.len);
        }
    }
}
