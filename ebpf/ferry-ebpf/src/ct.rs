//! Connection tracking: flow keys and entries in the `ct` LRU map.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use ferry_common::{CT_STAT_CREATED, CtEntry, CtKey};

use crate::{
    maps::{ct, ct_stats},
    parse::{IcmpError, L4},
};

/// The key of the packet's own direction.
#[inline(always)]
pub fn key_of(saddr: [u8; 4], daddr: [u8; 4], l4: &L4) -> CtKey {
    CtKey {
        saddr,
        daddr,
        sport: l4.sport,
        dport: l4.dport,
        proto: l4.proto,
        pad: [0; 3],
    }
}

/// The key of the flow an ICMP error quotes, in the direction the error
/// travels: the quoted packet reversed. That is the entry of the
/// translation the error has to undo.
#[inline(always)]
pub fn key_of_quoted(err: &IcmpError) -> CtKey {
    let q = &err.inner;
    let (sport, dport) = if q.proto == ferry_common::IPPROTO_ICMP {
        (q.sport, [0; 2])
    } else {
        (q.dport, q.sport)
    };
    CtKey {
        saddr: err.inner_daddr,
        daddr: err.inner_saddr,
        sport,
        dport,
        proto: q.proto,
        pad: [0; 3],
    }
}

/// The entry for `key`, its last-seen time refreshed (for the GC).
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<CtEntry> {
    lookup_seen(key, 0)
}

/// The time stamp of a packet: CLOCK_MONOTONIC at tick resolution, which
/// is all the GC's timeouts (seconds) need. The precise clock reads the
/// clock source on every packet, which in a VM (kvm-clock) cost more than
/// a map lookup.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Like `lookup`, also recording the TCP flags of the packet.
#[inline(always)]
pub fn lookup_seen(key: &CtKey, tcp_flags: u8) -> Option<CtEntry> {
    let entry = ct.get_ptr_mut(key)?;
    let now = now_ns();
    // SAFETY: an LRU map value stays valid during the program run (RCU);
    // the plain stores race only with other CPUs doing the same to the
    // same flow, and either value is right. Stores that would not change
    // the entry are skipped: within a tick most packets of a busy flow
    // leave its cache line clean.
    unsafe {
        if (*entry).last_seen_ns != now {
            (*entry).last_seen_ns = now;
        }
        if (*entry).tcp_flags | tcp_flags != (*entry).tcp_flags {
            (*entry).tcp_flags |= tcp_flags;
        }
        Some(*entry)
    }
}

/// Records both directions of a new flow. A full map evicts the least
/// recently used entries; a failed insert only means the next packet of the
/// flow tries again.
#[inline(always)]
pub fn create(forward: &CtKey, fwd: &CtEntry, reply: &CtKey, rev: &CtEntry) {
    let now = now_ns();
    insert(
        forward,
        &CtEntry {
            last_seen_ns: now,
            ..*fwd
        },
    );
    insert(
        reply,
        &CtEntry {
            last_seen_ns: now,
            ..*rev
        },
    );
}

const BPF_NOEXIST: u64 = 1;

/// Writes an entry, counting it in `ct_stats` when it is a new one (an
/// existing key is overwritten uncounted), so that evictions can be told.
#[inline(always)]
pub fn insert(key: &CtKey, entry: &CtEntry) {
    if ct.insert(key, entry, BPF_NOEXIST).is_ok() {
        count_created();
    } else {
        let _ = ct.insert(key, entry, 0);
    }
}

/// Counts one entry the datapath created.
#[inline(always)]
pub fn count_created() {
    if let Some(slot) = ct_stats.get_ptr_mut(CT_STAT_CREATED) {
        // SAFETY: a per-CPU array slot is private to this CPU while the
        // program runs, and lives as long as the map.
        unsafe { *slot += 1 };
    }
}
