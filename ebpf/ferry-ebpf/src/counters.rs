//! The one place where packets are counted: per-endpoint traffic and drops
//! by reason. All maps are per-CPU, so plain adds are race-free.

use aya_ebpf::bindings::TC_ACT_SHOT;
use ferry_common::{DropReason, Endpoint, EndpointStats, PortKey};

use crate::maps::{drops, ep_stats, port_stats};

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
    TC_ACT_SHOT
}

/// The tc verdict for a program's result: its own, or a counted drop.
#[inline(always)]
pub fn tc_verdict(result: Result<i32, DropReason>) -> i32 {
    match result {
        Ok(verdict) => verdict,
        Err(reason) => drop_packet(reason),
    }
}

/// Which way a counted packet went, seen from the container.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Delivered to the container (`rx`).
    In,
    /// Sent by the container (`tx`).
    Out,
}

#[inline(always)]
fn add(stats: *mut EndpointStats, way: Way, bytes: u32) {
    // SAFETY: a per-CPU value the caller just looked up: private to this
    // CPU while the program runs; an entry ferryd removes meanwhile stays
    // valid memory until the RCU grace period ends.
    unsafe {
        if way == Way::In {
            (*stats).rx_packets += 1;
            (*stats).rx_bytes += u64::from(bytes);
        } else {
            (*stats).tx_packets += 1;
            (*stats).tx_bytes += u64::from(bytes);
        }
    }
}

/// Counts a packet container `ep` sent.
#[inline(always)]
pub fn count_tx(ep: &Endpoint, bytes: u32) {
    if let Some(stats) = ep_stats.get_ptr_mut(ep.stats) {
        add(stats, Way::Out, bytes);
    }
}

/// Counts a packet delivered to container `ep`.
#[inline(always)]
pub fn count_rx(ep: &Endpoint, bytes: u32) {
    if let Some(stats) = ep_stats.get_ptr_mut(ep.stats) {
        add(stats, Way::In, bytes);
    }
}

/// Counts a packet of the published port `addr`:`port`. A publish on every
/// address (the common case) is looked up first, then one on `addr`.
#[inline(always)]
pub fn count_port(addr: [u8; 4], port: [u8; 2], proto: u8, way: Way, bytes: u32) {
    let mut key = PortKey {
        ip: [0; 4],
        port,
        proto,
        pad: 0,
    };
    if let Some(stats) = port_stats.get_ptr_mut(key) {
        add(stats, way, bytes);
        return;
    }
    key.ip = addr;
    if let Some(stats) = port_stats.get_ptr_mut(key) {
        add(stats, way, bytes);
    }
}
