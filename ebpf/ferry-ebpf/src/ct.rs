//! Connection tracking in two tables, so that no flood of new flows can
//! cost an established one its entry:
//!
//! - `ct_new` (LRU) holds what is not assured: a flow is created there,
//!   both directions at once, and a flood of half-open or unanswered flows
//!   evicts only its own kind;
//! - `ct` (hash, never evicts) holds assured flows: a flow moves there when
//!   its originator sends again after `ct_assured` holds (handshake done,
//!   or UDP answered), and back to `ct_new` when it closes (RST, or FIN
//!   both ways), where its short closing timeout runs.
//!
//! Lookups try `ct` first: an established flow costs one lookup, as with a
//! single table; only flows in `ct_new` pay a second. Entries are copied
//! into the other table before they are deleted from their own, so a
//! packet on another CPU always finds its flow in one of them.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use ferry_common::{
    CT_STAT_ASSURED_ENTERED, CT_STAT_ASSURED_FULL, CT_STAT_ASSURED_LEFT, CT_STAT_NEW_ENTERED,
    CT_STAT_NEW_LEFT, CtEntry, CtKey, IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, ct_assured,
};

use crate::{
    maps::{ct, ct_new, ct_stats},
    parse::{IcmpError, L4},
};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

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

/// The time stamp of a packet: CLOCK_MONOTONIC at tick resolution, which
/// is all the GC's timeouts (seconds) need. The precise clock reads the
/// clock source on every packet, which in a VM (kvm-clock) cost more than
/// a map lookup.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Refreshes an entry in place (last-seen time, the packet's TCP flags)
/// and returns a copy.
#[inline(always)]
fn refresh(entry: *mut CtEntry, tcp_flags: u8) -> CtEntry {
    let now = now_ns();
    // SAFETY: a map value stays valid during the program run (RCU); the
    // plain stores race only with other CPUs doing the same to the same
    // flow, and either value is right. Stores that would not change the
    // entry are skipped: within a tick most packets of a busy flow leave
    // its cache line clean.
    unsafe {
        if (*entry).last_seen_ns != now {
            (*entry).last_seen_ns = now;
        }
        if (*entry).tcp_flags | tcp_flags != (*entry).tcp_flags {
            (*entry).tcp_flags |= tcp_flags;
        }
        *entry
    }
}

/// The entry for `key` in either table, its last-seen time refreshed (for
/// the GC). Moves nothing: for packets about a flow (ICMP errors), not of
/// it.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<CtEntry> {
    if let Some(entry) = ct.get_ptr_mut(key) {
        return Some(refresh(entry, 0));
    }
    Some(refresh(ct_new.get_ptr_mut(key)?, 0))
}

/// The entry for a packet of the flow `key` with `tcp_flags`, recorded in
/// it. The packet that assures its flow promotes it to `ct`; the FIN or
/// RST that closes an assured flow demotes it to `ct_new`. The moves are functions of
/// their own (BPF-to-BPF calls) given the map value, not a copy: inlined,
/// or with a copy's address taken, they add to the stack of every
/// program's main frame, which must stay within 512 bytes with its
/// deepest call.
#[inline(always)]
pub fn lookup_seen(key: &CtKey, tcp_flags: u8) -> Option<CtEntry> {
    // One copy of the entry, from either table: a copy made on two paths
    // took a stack slot of its own.
    let (ptr, assured) = match ct.get_ptr_mut(key) {
        Some(ptr) => (ptr, true),
        None => (ct_new.get_ptr_mut(key)?, false),
    };
    let entry = refresh(ptr, tcp_flags);
    if assured {
        if key.proto == IPPROTO_TCP && tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            demote(key, ptr);
        }
    } else if entry.is_originator() && could_be_assured(key.proto, entry.tcp_flags) {
        promote_if_assured(key, ptr);
    }
    Some(entry)
}

/// Whether what the originator sent alone leaves its flow a chance of
/// being assured: a TCP originator that has not acknowledged anything
/// (SYN retransmissions) or began to close needs no look at the other
/// direction.
#[inline(always)]
fn could_be_assured(proto: u8, sent: u8) -> bool {
    proto != IPPROTO_TCP || ct_assured(proto, sent, TCP_ACK)
}

/// Moves the flow of the originator direction `key` (`entry`, in
/// `ct_new`) to `ct` if it is assured. Both directions go, or neither.
/// Entries are copied map to map by the helpers, not through the stack.
#[inline(never)]
fn promote_if_assured(key: &CtKey, entry: *const CtEntry) {
    // SAFETY: a map value, valid for the program run (RCU); read before
    // anything deletes it.
    let entry = unsafe { &*entry };
    let pair = key.pair(entry);
    let Some(reply) = ct_new.get_ptr(pair) else {
        return;
    };
    // SAFETY: as `entry`.
    let reply = unsafe { &*reply };
    if !ct_assured(key.proto, entry.tcp_flags, reply.tcp_flags) {
        return;
    }
    if !enter_assured(key, entry) {
        return;
    }
    if !enter_assured(&pair, reply) {
        // `ct` is full: the flow stays unassured, as it was.
        if ct.remove(key).is_ok() {
            count(CT_STAT_ASSURED_LEFT);
        }
        return;
    }
    for k in [key, &pair] {
        if ct_new.remove(k).is_ok() {
            count(CT_STAT_NEW_LEFT);
        }
    }
}

/// Copies one direction into `ct`. False when `ct` is full (counted).
#[inline(always)]
fn enter_assured(key: &CtKey, entry: &CtEntry) -> bool {
    match ct.insert(key, entry, BPF_NOEXIST) {
        Ok(()) => {
            count(CT_STAT_ASSURED_ENTERED);
            true
        }
        // Another CPU promoted the same flow a moment ago.
        Err(e) if e == -EEXIST => true,
        Err(_) => {
            count(CT_STAT_ASSURED_FULL);
            false
        }
    }
}

/// Moves the assured flow of direction `key` (`entry`, in `ct`) back to
/// `ct_new` once it is closing: reset, or a FIN both ways. Closing flows
/// have the short timeouts of the unassured. A half-close (a FIN one way)
/// stays assured: the other side may go on sending for as long as it
/// likes.
#[inline(never)]
fn demote(key: &CtKey, entry: *const CtEntry) {
    // SAFETY: as in `promote_if_assured`.
    let entry = unsafe { &*entry };
    let pair = key.pair(entry);
    let reply = ct.get_ptr(pair);
    // SAFETY: as `entry`.
    let answered = reply.map_or(0, |r| unsafe { (*r).tcp_flags });
    if (entry.tcp_flags | answered) & TCP_RST == 0 && entry.tcp_flags & answered & TCP_FIN == 0 {
        return;
    }
    insert(key, entry);
    if let Some(reply) = reply {
        // SAFETY: as `entry`.
        insert(&pair, unsafe { &*reply });
    }
    for k in [key, &pair] {
        if ct.remove(k).is_ok() {
            count(CT_STAT_ASSURED_LEFT);
        }
    }
}

/// Records both directions of a new flow in `ct_new`. A full map evicts
/// its least recently used entries; a failed insert only means the next
/// packet of the flow tries again.
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

/// Writes an entry into `ct_new`, counting it when it is a new one (an
/// existing key is overwritten uncounted), so that evictions can be told.
#[inline(always)]
pub fn insert(key: &CtKey, entry: &CtEntry) {
    if ct_new.insert(key, entry, BPF_NOEXIST).is_ok() {
        count(CT_STAT_NEW_ENTERED);
    } else {
        let _ = ct_new.insert(key, entry, 0);
    }
}

/// Claims `key` for a new flow direction: inserted into `ct_new` only if
/// neither table has it. The insert is the claim (two CPUs cannot both
/// make it); `ct` is checked after it, because a promotion copies into
/// `ct` before it deletes from `ct_new`: a key that was free in `ct_new`
/// at the insert is, if promoted, already in `ct` by then.
#[inline(always)]
pub fn claim(key: &CtKey, entry: &CtEntry) -> bool {
    if ct_new.insert(key, entry, BPF_NOEXIST).is_err() {
        return false;
    }
    count(CT_STAT_NEW_ENTERED);
    if ct.get_ptr(key).is_some() {
        if ct_new.remove(key).is_ok() {
            count(CT_STAT_NEW_LEFT);
        }
        return false;
    }
    true
}

/// Adds one to a `ct_stats` slot.
#[inline(always)]
fn count(slot: u32) {
    if let Some(slot) = ct_stats.get_ptr_mut(slot) {
        // SAFETY: a per-CPU array slot is private to this CPU while the
        // program runs, and lives as long as the map.
        unsafe { *slot += 1 };
    }
}
