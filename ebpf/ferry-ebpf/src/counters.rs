//! The one place where packets are counted: per-endpoint traffic and drops
//! by reason. All maps are per-CPU, so plain adds are race-free.

use aya_ebpf::bindings::TC_ACT_SHOT;
use ferry_common::{DropReason, Ipv4Key};

use crate::maps::{drops, ep_stats};

/// Counts a drop (every hook's drops are counted here).
#[inline(always)]
pub fn count_drop(reason: DropReason) {
    crate::debug::drop(reason);
    if let Some(slot) = drops.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU array slot is private to this CPU while the
        // program runs (preemption is disabled), and lives as long as the map.
        unsafe { *slot += 1 };
    }
}

/// Counts a drop and returns the tc verdict that drops the packet.
#[inline(always)]
pub fn drop_packet(reason: DropReason) -> i32 {
    count_drop(reason);
    TC_ACT_SHOT as i32
}

/// Counts a packet the container sent.
#[inline(always)]
pub fn count_tx(key: &Ipv4Key, bytes: u32) {
    if let Some(stats) = ep_stats.get_ptr_mut(key) {
        // SAFETY: per-CPU value, see `drop_packet`; the entry is only removed
        // by ferryd together with the endpoint, and a racing removal leaves
        // the slot memory valid until the RCU grace period ends.
        unsafe {
            (*stats).tx_packets += 1;
            (*stats).tx_bytes += u64::from(bytes);
        }
    }
}

/// Counts a packet delivered to the container.
#[inline(always)]
pub fn count_rx(key: &Ipv4Key, bytes: u32) {
    if let Some(stats) = ep_stats.get_ptr_mut(key) {
        // SAFETY: as in `count_tx`.
        unsafe {
            (*stats).rx_packets += 1;
            (*stats).rx_bytes += u64::from(bytes);
        }
    }
}
