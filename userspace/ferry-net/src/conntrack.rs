//! Connection tracking from userspace: listing, flushing, and the GC that
//! expires flows on per-state timeouts. It works on its own file
//! descriptors of the pinned maps, so it never holds ferryd's lock, and the
//! datapath never waits for it.
//!
//! Every flow has two entries: the originator's direction (`CT_DNAT`,
//! `CT_SNAT`) and the responder's (`CT_DNAT_REPLY`, `CT_SNAT_REPLY`); each
//! names the other through its key and translation, so the GC judges a flow
//! by both. They live in one of two tables (see the datapath's `ct.rs`):
//! `ct_new`, an LRU map, until the flow is assured, then `ct`, a hash map
//! only this GC removes from. Both are read as one.

use std::{collections::HashMap, net::Ipv4Addr, path::Path, time::Duration};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues};
use ferry_common::{
    CT_DNAT, CT_SEEN, CT_SNAT, CT_SNAT_REPLY, CT_STAT_ASSURED_ENTERED, CT_STAT_ASSURED_FULL,
    CT_STAT_ASSURED_LEFT, CT_STAT_ASSURED_REMOVED, CT_STAT_NEW_ENTERED, CT_STAT_NEW_LEFT,
    CT_STAT_NEW_REMOVED, CtEntry, CtKey, IPPROTO_ICMP, IPPROTO_TCP, TCP_FIN, TCP_RST, ct_assured,
};
use serde::{Deserialize, Serialize};

use crate::datapath::{MAP_CT, MAP_CT_NEW, MAP_CT_STATS};

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("conntrack map {path}: {reason}")]
    Map { path: String, reason: String },
}

/// How long a flow may stay idle, by state. A TCP flow is established
/// only once its handshake completed (SYN, SYN-ACK, then ACK from the
/// originator), as netfilter's; until then it has a short timeout, so a
/// flood of handshakes that never complete ages out in a minute, not in
/// hours.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub tcp_established: Duration,
    /// SYN sent, no answer yet.
    pub tcp_syn: Duration,
    /// SYN answered with SYN-ACK, the originator's ACK not seen yet.
    pub tcp_syn_recv: Duration,
    /// A FIN one way: the other side may still send (a half-close), as
    /// netfilter's FIN_WAIT/CLOSE_WAIT.
    pub tcp_fin_wait: Duration,
    /// FIN both ways, or RST.
    pub tcp_closing: Duration,
    /// UDP answered by the responder.
    pub udp: Duration,
    /// UDP assured: the originator spoke again after an answer (a stream,
    /// not a lone query and its answer).
    pub udp_stream: Duration,
    /// UDP the responder never answered.
    pub udp_unreplied: Duration,
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_syn: Duration::from_secs(60),
            tcp_syn_recv: Duration::from_secs(60),
            tcp_fin_wait: Duration::from_secs(120),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            udp_stream: Duration::from_secs(120),
            udp_unreplied: Duration::from_secs(30),
            icmp: Duration::from_secs(30),
        }
    }
}

/// A direction whose other one is gone (evicted by the LRU): it can
/// translate nothing back, so the GC removes it once it has been idle this
/// long (a flow being created is never lone for more than an instant).
pub const LONE_GRACE: Duration = Duration::from_secs(2);

impl Timeouts {
    /// Applies `name=seconds` (`tcp_established`, `tcp_syn`,
    /// `tcp_syn_recv`, `tcp_fin_wait`, `tcp_closing`, `udp`, `udp_stream`,
    /// `udp_unreplied`, `icmp`).
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (name, secs) = spec
            .split_once('=')
            .ok_or_else(|| format!("conntrack timeout {spec:?}: expected NAME=SECONDS"))?;
        let secs: u64 = secs.parse().map_err(|_| {
            format!("conntrack timeout {spec:?}: {secs:?} is not a number of seconds")
        })?;
        let slot = match name {
            "tcp_established" => &mut self.tcp_established,
            "tcp_syn" => &mut self.tcp_syn,
            "tcp_syn_recv" => &mut self.tcp_syn_recv,
            "tcp_fin_wait" => &mut self.tcp_fin_wait,
            "tcp_closing" => &mut self.tcp_closing,
            "udp" => &mut self.udp,
            "udp_stream" => &mut self.udp_stream,
            "udp_unreplied" => &mut self.udp_unreplied,
            "icmp" => &mut self.icmp,
            _ => {
                return Err(format!(
                    "conntrack timeout {spec:?}: unknown {name:?} (tcp_established, tcp_syn, \
                     tcp_syn_recv, tcp_fin_wait, tcp_closing, udp, udp_stream, udp_unreplied, icmp)"
                ));
            }
        };
        *slot = Duration::from_secs(secs);
        Ok(())
    }
}

/// The key of the other direction of the flow `key` belongs to.
pub fn pair_key(key: &CtKey, entry: &CtEntry) -> CtKey {
    key.pair(entry)
}

/// The state name and idle timeout of a flow, from what each direction
/// saw (TCP flags ORed; `CT_SEEN` for UDP and ICMP) and whether it is in
/// the assured table.
pub fn state(
    proto: u8,
    originator: Option<&CtEntry>,
    responder: Option<&CtEntry>,
    assured: bool,
    t: &Timeouts,
) -> (&'static str, Duration) {
    let sent = originator.map_or(0, |e| e.tcp_flags);
    let answered = responder.map_or(0, |e| e.tcp_flags);
    match proto {
        IPPROTO_TCP => {
            if (sent | answered) & TCP_RST != 0 || sent & answered & TCP_FIN != 0 {
                ("closing", t.tcp_closing)
            } else if (sent | answered) & TCP_FIN != 0 {
                ("fin_wait", t.tcp_fin_wait)
            } else if ct_assured(proto, sent, answered) {
                ("established", t.tcp_established)
            } else if answered != 0 {
                ("syn_recv", t.tcp_syn_recv)
            } else {
                ("syn_sent", t.tcp_syn)
            }
        }
        IPPROTO_ICMP => ("icmp", t.icmp),
        _ if assured => ("udp_stream", t.udp_stream),
        _ if answered & CT_SEEN != 0 => ("udp", t.udp),
        _ => ("udp_unreplied", t.udp_unreplied),
    }
}

/// One tracked flow, decoded for people (`ferry conntrack list`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Flow {
    pub proto: String,
    /// "dnat" (published port) or "snat" (masquerade).
    pub nat: String,
    /// As the originator sent it.
    pub src: String,
    pub dst: String,
    /// What the far side sees or what the container gets.
    pub translated: String,
    pub state: String,
    /// In the assured table (`ct`), where no flood can evict it.
    #[serde(default)]
    pub assured: bool,
    pub idle_seconds: u64,
    /// Seconds until the GC forgets the flow if it stays idle.
    pub expires_in_seconds: u64,
}

impl Flow {
    /// Whether `ip` is one of the flow's addresses (either side or the
    /// translation).
    pub fn involves(&self, ip: Ipv4Addr) -> bool {
        [&self.src, &self.dst, &self.translated]
            .iter()
            .any(|a| a.split(':').next() == Some(ip.to_string().as_str()))
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        IPPROTO_TCP => "tcp",
        IPPROTO_ICMP => "icmp",
        _ => "udp",
    }
}

fn endpoint(addr: [u8; 4], port: [u8; 2]) -> String {
    format!("{}:{}", Ipv4Addr::from(addr), u16::from_be_bytes(port))
}

/// CLOCK_MONOTONIC in ns, the clock of the datapath's time stamps (`bpf_ktime_get_coarse_ns`).
fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// The conntrack tables, by their map names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    New,
    Assured,
}

/// The pinned `ct` and `ct_new` maps and their `ct_stats`, opened on
/// their own fds.
pub struct Conntrack {
    assured: BpfHashMap<MapData, CtKey, CtEntry>,
    new: BpfHashMap<MapData, CtKey, CtEntry>,
    stats: PerCpuArray<MapData, u64>,
    path: String,
}

/// What happened to one table's entries since the maps were created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableCounts {
    /// Entries that came into the table (created, or moved from the other).
    pub entered: u64,
    /// Entries the datapath moved to the other table.
    pub left: u64,
    /// Entries ferryd removed (GC, flush).
    pub removed: u64,
}

impl TableCounts {
    /// Entries the map evicted: what came in and is neither gone another
    /// way nor still there.
    pub fn evicted(&self, live: u64) -> u64 {
        self.entered.saturating_sub(self.left + self.removed + live)
    }
}

/// What happened to conntrack entries since the maps were created, by
/// table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtCounts {
    /// `ct_new`: flows not yet assured.
    pub new: TableCounts,
    /// `ct`: assured flows.
    pub assured: TableCounts,
    /// Promotions refused because `ct` was full.
    pub assured_full: u64,
}

/// Reads the `ct_stats` counters, summed over CPUs.
pub fn counts(stats: &PerCpuArray<impl std::borrow::Borrow<MapData>, u64>) -> CtCounts {
    let sum = |slot: u32| stats.get(&slot, 0).map_or(0, |v| v.iter().sum());
    CtCounts {
        new: TableCounts {
            entered: sum(CT_STAT_NEW_ENTERED),
            left: sum(CT_STAT_NEW_LEFT),
            removed: sum(CT_STAT_NEW_REMOVED),
        },
        assured: TableCounts {
            entered: sum(CT_STAT_ASSURED_ENTERED),
            left: sum(CT_STAT_ASSURED_LEFT),
            removed: sum(CT_STAT_ASSURED_REMOVED),
        },
        assured_full: sum(CT_STAT_ASSURED_FULL),
    }
}

/// Every entry of a conntrack table: in batches, else key by key.
fn entries(map: &BpfHashMap<MapData, CtKey, CtEntry>) -> Vec<(CtKey, CtEntry)> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    match crate::datapath::lookup_batch(map.map().fd().as_fd()) {
        Ok(Some(all)) => all,
        Ok(None) => map.iter().filter_map(Result::ok).collect(),
        Err(e) => {
            tracing::debug!(%e, "conntrack: batch lookup failed, walking the map");
            map.iter().filter_map(Result::ok).collect()
        }
    }
}

/// Both tables read as one: where an entry is in both (for an instant,
/// while the datapath moves it), the `ct` copy is the one packets see.
type Snapshot = HashMap<CtKey, (CtEntry, Table)>;

impl Conntrack {
    /// Opens the maps pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, ConntrackError> {
        let path = pin_dir.display().to_string();
        let fail = |name: &str, reason: String| ConntrackError::Map {
            path: pin_dir.join(name).display().to_string(),
            reason,
        };
        let data = |name: &str| {
            MapData::from_pin(pin_dir.join(name)).map_err(|e| fail(name, e.to_string()))
        };
        let assured = BpfHashMap::try_from(Map::HashMap(data(MAP_CT)?))
            .map_err(|e| fail(MAP_CT, e.to_string()))?;
        let new = BpfHashMap::try_from(Map::LruHashMap(data(MAP_CT_NEW)?))
            .map_err(|e| fail(MAP_CT_NEW, e.to_string()))?;
        let stats = PerCpuArray::try_from(Map::PerCpuArray(data(MAP_CT_STATS)?))
            .map_err(|e| fail(MAP_CT_STATS, e.to_string()))?;
        Ok(Self {
            assured,
            new,
            stats,
            path,
        })
    }

    fn table(&mut self, table: Table) -> &mut BpfHashMap<MapData, CtKey, CtEntry> {
        match table {
            Table::New => &mut self.new,
            Table::Assured => &mut self.assured,
        }
    }

    /// Adds `n` to the entries ferryd removed from `table` (CPU 0's slot:
    /// ferryd is the only writer of these slots).
    fn record_removed(&mut self, table: Table, n: usize) {
        if n == 0 {
            return;
        }
        let slot = match table {
            Table::New => CT_STAT_NEW_REMOVED,
            Table::Assured => CT_STAT_ASSURED_REMOVED,
        };
        let Ok(values) = self.stats.get(&slot, 0) else {
            return;
        };
        let mut values: Vec<u64> = values.iter().copied().collect();
        if let Some(first) = values.first_mut() {
            *first += n as u64;
        }
        if let Ok(values) = PerCpuValues::try_from(values)
            && let Err(e) = self.stats.set(slot, values, 0)
        {
            tracing::warn!(%e, "cannot count removed conntrack entries");
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut all: Snapshot = entries(&self.new)
            .into_iter()
            .map(|(k, e)| (k, (e, Table::New)))
            .collect();
        all.extend(
            entries(&self.assured)
                .into_iter()
                .map(|(k, e)| (k, (e, Table::Assured))),
        );
        all
    }

    /// Every flow, decoded.
    pub fn list(&self, timeouts: &Timeouts) -> Vec<Flow> {
        let all = self.snapshot();
        let now = now_ns();
        // Every entry shows: a flow once (from its originator), a direction
        // whose other one is gone on its own, as `lone` (the GC removes it).
        let mut flows: Vec<Flow> = all
            .iter()
            .filter_map(|(k, (e, table))| {
                let other = all.get(&pair_key(k, e)).map(|(o, _)| o);
                if !e.is_originator() && other.is_some() {
                    return None;
                }
                let (state, timeout) = match other {
                    None => ("lone", LONE_GRACE),
                    Some(responder) => state(
                        k.proto,
                        Some(e),
                        Some(responder),
                        *table == Table::Assured,
                        timeouts,
                    ),
                };
                let last = other.map_or(e.last_seen_ns, |r| r.last_seen_ns.max(e.last_seen_ns));
                let nat = match e.kind {
                    CT_DNAT => "dnat",
                    CT_SNAT => "snat",
                    CT_SNAT_REPLY => "snat-reply",
                    _ => "dnat-reply",
                };
                Some(Flow {
                    proto: proto_name(k.proto).to_owned(),
                    nat: nat.to_owned(),
                    src: endpoint(k.saddr, k.sport),
                    dst: endpoint(k.daddr, k.dport),
                    translated: endpoint(e.nat_addr, e.nat_port),
                    state: state.to_owned(),
                    assured: *table == Table::Assured,
                    idle_seconds: now.saturating_sub(last) / 1_000_000_000,
                    expires_in_seconds: timeout
                        .as_secs()
                        .saturating_sub(now.saturating_sub(last) / 1_000_000_000),
                })
            })
            .collect();
        flows.sort_by(|a, b| (&a.src, &a.dst).cmp(&(&b.src, &b.dst)));
        flows
    }

    /// Removes every flow. Returns how many entries went.
    pub fn flush(&mut self) -> usize {
        let mut total = 0;
        for table in [Table::New, Table::Assured] {
            let map = self.table(table);
            let keys: Vec<CtKey> = map.keys().filter_map(Result::ok).collect();
            let removed = keys.iter().filter(|k| map.remove(k).is_ok()).count();
            self.record_removed(table, removed);
            total += removed;
        }
        total
    }

    /// Expires idle flows; both directions go together. A direction whose
    /// other one is gone goes after `LONE_GRACE`. An entry refreshed (or
    /// moved) by the datapath since the snapshot is kept. Returns how many
    /// entries were removed.
    pub fn collect(&mut self, timeouts: &Timeouts) -> usize {
        let all = self.snapshot();
        let now = now_ns();
        let mut removed = [0; 2];
        for (key, (entry, table)) in &all {
            let pair = pair_key(key, entry);
            let other = all.get(&pair);
            // Judge each flow once, from its originator (or from a lone
            // responder whose originator is already gone).
            if !entry.is_originator() && other.is_some() {
                continue;
            }
            let other_entry = other.map(|(o, _)| o);
            let (originator, responder) = if entry.is_originator() {
                (Some(entry), other_entry)
            } else {
                (other_entry, Some(entry))
            };
            let timeout = match other {
                None => LONE_GRACE,
                Some(_) => {
                    let assured = *table == Table::Assured;
                    state(key.proto, originator, responder, assured, timeouts).1
                }
            };
            let last = other_entry.map_or(entry.last_seen_ns, |o| {
                o.last_seen_ns.max(entry.last_seen_ns)
            });
            if now.saturating_sub(last) < timeout.as_nanos() as u64 {
                continue;
            }
            let mut expired = vec![(key, *table, entry.last_seen_ns)];
            if let Some((o, t)) = other {
                expired.push((&pair, *t, o.last_seen_ns));
            }
            for (k, table, seen) in expired {
                let map = self.table(table);
                let unchanged = map.get(k, 0).is_ok_and(|e| e.last_seen_ns == seen);
                if unchanged && map.remove(k).is_ok() {
                    removed[table as usize] += 1;
                }
            }
        }
        self.record_removed(Table::New, removed[Table::New as usize]);
        self.record_removed(Table::Assured, removed[Table::Assured as usize]);
        removed.iter().sum()
    }

    /// The pin directory the maps were opened from.
    pub fn path(&self) -> &str {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use ferry_common::{CT_DNAT_REPLY, IPPROTO_UDP, TCP_ACK, TCP_SYN};

    use super::*;

    fn entry(kind: u8, nat: [u8; 4], port: u16, flags: u8) -> CtEntry {
        CtEntry {
            nat_addr: nat,
            nat_port: port.to_be_bytes(),
            kind,
            tcp_flags: flags,
            ..CtEntry::default()
        }
    }

    fn key(s: [u8; 4], d: [u8; 4], sp: u16, dp: u16, proto: u8) -> CtKey {
        CtKey {
            saddr: s,
            daddr: d,
            sport: sp.to_be_bytes(),
            dport: dp.to_be_bytes(),
            proto,
            pad: [0; 3],
        }
    }

    const CLIENT: [u8; 4] = [192, 0, 2, 7];
    const HOST: [u8; 4] = [10, 200, 0, 1];
    const CONT: [u8; 4] = [10, 89, 0, 2];

    #[test]
    fn timeouts_parse_by_name() {
        let mut t = Timeouts::default();
        t.set("udp=5").expect("udp");
        t.set("tcp_closing=1").expect("closing");
        assert_eq!(
            (t.udp, t.tcp_closing),
            (Duration::from_secs(5), Duration::from_secs(1))
        );
        assert!(t.set("udp").expect_err("no value").contains("NAME=SECONDS"));
        assert!(
            t.set("udp=x")
                .expect_err("bad number")
                .contains("not a number")
        );
        assert!(
            t.set("sctp=1")
                .expect_err("unknown name")
                .contains("unknown")
        );
    }

    #[test]
    fn pair_keys_are_mutual_for_every_kind() {
        // Published port: client -> host:8080, translated to container:80.
        let fwd = key(CLIENT, HOST, 40000, 8080, IPPROTO_TCP);
        let fwd_e = entry(CT_DNAT, CONT, 80, 0);
        let rev = key(CONT, CLIENT, 80, 40000, IPPROTO_TCP);
        let rev_e = entry(CT_DNAT_REPLY, HOST, 8080, 0);
        assert_eq!(pair_key(&fwd, &fwd_e), rev);
        assert_eq!(pair_key(&rev, &rev_e), fwd);
        // Masquerade: container:5000 -> client:53 as host:61234.
        let out = key(CONT, CLIENT, 5000, 53, IPPROTO_UDP);
        let out_e = entry(CT_SNAT, HOST, 61234, 0);
        let back = key(CLIENT, HOST, 53, 61234, IPPROTO_UDP);
        let back_e = entry(CT_SNAT_REPLY, CONT, 5000, 0);
        assert_eq!(pair_key(&out, &out_e), back);
        assert_eq!(pair_key(&back, &back_e), out);
        // Echo: id 7 masqueraded as 61999; both keys carry the id in sport.
        let ping = key(CONT, CLIENT, 7, 0, IPPROTO_ICMP);
        let ping_e = entry(CT_SNAT, HOST, 61999, 0);
        let pong = key(CLIENT, HOST, 61999, 0, IPPROTO_ICMP);
        let pong_e = entry(CT_SNAT_REPLY, CONT, 7, 0);
        assert_eq!(pair_key(&ping, &ping_e), pong);
        assert_eq!(pair_key(&pong, &pong_e), ping);
    }

    #[test]
    fn tcp_is_established_only_once_the_handshake_completed() {
        let t = Timeouts::default();
        let syn = entry(CT_SNAT, HOST, 1, TCP_SYN);
        let syn_ack_sent = entry(CT_SNAT, HOST, 1, TCP_SYN | TCP_ACK);
        let quiet = entry(CT_SNAT_REPLY, CONT, 1, 0);
        let synack = entry(CT_SNAT_REPLY, CONT, 1, TCP_SYN | TCP_ACK);
        let fin = entry(CT_SNAT_REPLY, CONT, 1, TCP_FIN | TCP_ACK);
        let rst = entry(CT_SNAT, HOST, 1, TCP_RST);
        let fin_sent = entry(CT_SNAT, HOST, 1, TCP_SYN | TCP_ACK | TCP_FIN);
        let ack_only = entry(CT_SNAT_REPLY, CONT, 1, TCP_ACK);
        for (sent, answered, want) in [
            (&syn, &quiet, ("syn_sent", t.tcp_syn)),
            // A flood's handshake: answered, never completed.
            (&syn, &synack, ("syn_recv", t.tcp_syn_recv)),
            (&syn_ack_sent, &synack, ("established", t.tcp_established)),
            // Both sides acknowledging without a SYN seen: a flow picked up
            // mid-stream (its first entries were evicted or flushed).
            (&syn_ack_sent, &ack_only, ("established", t.tcp_established)),
            // A half-close: the other side may go on sending.
            (&syn_ack_sent, &fin, ("fin_wait", t.tcp_fin_wait)),
            (&fin_sent, &fin, ("closing", t.tcp_closing)),
            (&rst, &synack, ("closing", t.tcp_closing)),
        ] {
            assert_eq!(
                state(IPPROTO_TCP, Some(sent), Some(answered), false, &t),
                want
            );
        }
        assert_eq!(
            state(IPPROTO_TCP, Some(&syn), None, false, &t),
            ("syn_sent", t.tcp_syn)
        );
    }

    #[test]
    fn udp_is_short_lived_until_answered() {
        let t = Timeouts::default();
        let sent = entry(CT_SNAT, HOST, 1, CT_SEEN);
        let quiet = entry(CT_SNAT_REPLY, CONT, 1, 0);
        let answered = entry(CT_SNAT_REPLY, CONT, 1, CT_SEEN);
        assert_eq!(
            state(IPPROTO_UDP, Some(&sent), Some(&quiet), false, &t),
            ("udp_unreplied", t.udp_unreplied)
        );
        assert_eq!(
            state(IPPROTO_UDP, Some(&sent), Some(&answered), false, &t),
            ("udp", t.udp)
        );
        // Assured (promoted by the originator's next datagram): a stream.
        assert_eq!(
            state(IPPROTO_UDP, Some(&sent), Some(&answered), true, &t),
            ("udp_stream", t.udp_stream)
        );
        assert!(t.udp_unreplied <= t.udp && t.udp < t.udp_stream);
        assert_eq!(state(IPPROTO_ICMP, None, None, false, &t), ("icmp", t.icmp));
    }
}
