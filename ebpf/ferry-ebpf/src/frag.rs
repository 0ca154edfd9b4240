//! Fragments of translated datagrams. Only the first fragment carries the
//! ports: it is translated through `ct` like any packet, and records here
//! what was done; later fragments repeat it for their IPv4 address (their
//! payload, including the L4 checksum the first fragment fixed for the
//! whole datagram, is untouched).

use ferry_common::{CtEntry, FragKey};

use crate::{maps::frags, parse::L4};

/// Records the translation `entry` for the rest of the datagram when `l4`
/// is a first fragment; `saddr`/`daddr` as the packet arrived.
#[inline(always)]
pub fn record(saddr: [u8; 4], daddr: [u8; 4], l4: &L4, entry: &CtEntry) {
    if !l4.first_fragment {
        return;
    }
    let key = FragKey {
        saddr,
        daddr,
        id: l4.ip_id,
        proto: l4.proto,
        pad: 0,
    };
    // A full map evicts the oldest datagram; a failed insert costs this
    // datagram's later fragments, counted as fragment_unknown.
    let _ = frags.insert(key, entry, 0);
}

/// The translation recorded for a later fragment's datagram.
#[inline(always)]
pub fn lookup(key: &FragKey) -> Option<CtEntry> {
    // SAFETY: LRU map values are valid for the program run; copied out.
    unsafe { frags.get(key) }.copied()
}
