//! Datapath debug logging through aya-log, off unless ferryd sets
//! `CONFIG_DEBUG_LOG` (`ferry debug datapath on`). Switched off, a call costs
//! one array lookup, and only drops and new flows make one.

use core::net::Ipv4Addr;

use aya_log_ebpf::info;
use ferry_common::{CONFIG_DEBUG_LOG, CONFIG_FLAGS, CtKey, DropReason};

use crate::maps::config;

#[inline(always)]
fn enabled() -> bool {
    config
        .get(CONFIG_FLAGS)
        .is_some_and(|flags| flags & CONFIG_DEBUG_LOG != 0)
}

/// A dropped packet, by reason.
#[inline(always)]
pub fn drop(reason: DropReason) {
    if enabled() {
        // aya-log sends through its ring buffer; the context argument is
        // not used by it.
        info!(&(), "drop reason={}", reason.name());
    }
}

/// A new translated flow: `kind` is dnat or snat, `key` the original
/// 5-tuple, `to` what one side was rewritten to. Three short records: each
/// log call's stack adds to the calling program's (512 bytes in all, with
/// the deepest call), and a record of four arguments took 104 bytes.
#[inline(always)]
pub fn new_flow(kind: &str, key: &CtKey, to: [u8; 4], to_port: [u8; 2]) {
    if enabled() {
        info!(
            &(),
            "new {} flow from {}:{}",
            kind,
            Ipv4Addr::from(key.saddr),
            u16::from_be_bytes(key.sport)
        );
        info!(
            &(),
            "  to {}:{}",
            Ipv4Addr::from(key.daddr),
            u16::from_be_bytes(key.dport)
        );
        info!(
            &(),
            "  translated to {}:{}",
            Ipv4Addr::from(to),
            u16::from_be_bytes(to_port)
        );
    }
}
