//! Connection tracking from userspace: listing, flushing, and the GC that
//! expires flows on per-state timeouts. It works on its own file descriptor
//! of the pinned `ct` map, so it never holds ferryd's lock, and the
//! datapath never waits for it.
//!
//! Every flow has two entries: the originator's direction (`CT_DNAT`,
//! `CT_SNAT`) and the responder's (`CT_DNAT_REPLY`, `CT_SNAT_REPLY`); each
//! names the other through its key and translation, so the GC judges a flow
//! by both.

use std::{collections::HashMap, net::Ipv4Addr, path::Path, time::Duration};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues};
use ferry_common::{
    CT_DNAT, CT_SEEN, CT_SNAT, CT_SNAT_REPLY, CT_STAT_CREATED, CT_STAT_REMOVED, CtEntry, CtKey,
    IPPROTO_ICMP, IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};
use serde::{Deserialize, Serialize};

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
    /// FIN or RST seen.
    pub tcp_closing: Duration,
    /// UDP answered by the responder.
    pub udp: Duration,
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
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(120),
            udp_unreplied: Duration::from_secs(30),
            icmp: Duration::from_secs(30),
        }
    }
}

/// The state names `ferry conntrack list` shows for `Timeouts`' classes.
pub const STATES: [&str; 7] = [
    "established",
    "syn_sent",
    "syn_recv",
    "closing",
    "udp",
    "udp_unreplied",
    "icmp",
];

/// A direction whose other one is gone (evicted by the LRU): it can
/// translate nothing back, so the GC removes it once it has been idle this
/// long (a flow being created is never lone for more than an instant).
pub const LONE_GRACE: Duration = Duration::from_secs(2);

impl Timeouts {
    /// Applies `name=seconds` (`tcp_established`, `tcp_syn`,
    /// `tcp_syn_recv`, `tcp_closing`, `udp`, `udp_unreplied`, `icmp`).
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
            "tcp_closing" => &mut self.tcp_closing,
            "udp" => &mut self.udp,
            "udp_unreplied" => &mut self.udp_unreplied,
            "icmp" => &mut self.icmp,
            _ => {
                return Err(format!(
                    "conntrack timeout {spec:?}: unknown {name:?} (tcp_established, tcp_syn, \
                     tcp_syn_recv, tcp_closing, udp, udp_unreplied, icmp)"
                ));
            }
        };
        *slot = Duration::from_secs(secs);
        Ok(())
    }
}

fn is_originator(kind: u8) -> bool {
    kind == CT_DNAT || kind == CT_SNAT
}

/// The key of the other direction of the flow `key` belongs to.
pub fn pair_key(key: &CtKey, entry: &CtEntry) -> CtKey {
    let icmp = key.proto == IPPROTO_ICMP;
    match entry.kind {
        // Translated destination: the other direction comes from it.
        CT_DNAT | CT_SNAT_REPLY => CtKey {
            saddr: entry.nat_addr,
            daddr: key.saddr,
            sport: entry.nat_port,
            dport: if icmp { [0; 2] } else { key.sport },
            ..*key
        },
        // Translated source: the other direction goes to it.
        _ => CtKey {
            saddr: key.daddr,
            daddr: entry.nat_addr,
            sport: if icmp { entry.nat_port } else { key.dport },
            dport: if icmp { [0; 2] } else { entry.nat_port },
            ..*key
        },
    }
}

/// The state name and idle timeout of a flow, from what each direction
/// saw (TCP flags ORed; `CT_SEEN` for UDP and ICMP).
pub fn state(
    proto: u8,
    originator: Option<&CtEntry>,
    responder: Option<&CtEntry>,
    t: &Timeouts,
) -> (&'static str, Duration) {
    let sent = originator.map_or(0, |e| e.tcp_flags);
    let answered = responder.map_or(0, |e| e.tcp_flags);
    match proto {
        IPPROTO_TCP => {
            if (sent | answered) & (TCP_FIN | TCP_RST) != 0 {
                ("closing", t.tcp_closing)
            } else if answered & TCP_SYN == 0 {
                ("syn_sent", t.tcp_syn)
            } else if sent & TCP_ACK == 0 {
                ("syn_recv", t.tcp_syn_recv)
            } else {
                ("established", t.tcp_established)
            }
        }
        IPPROTO_ICMP => ("icmp", t.icmp),
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

/// The pinned `ct` map (and its `ct_stats` next to it), opened on their
/// own fds.
pub struct Conntrack {
    map: BpfHashMap<MapData, CtKey, CtEntry>,
    stats: PerCpuArray<MapData, u64>,
    path: String,
}

/// What happened to conntrack entries since the maps were created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtCounts {
    /// Entries the datapath created.
    pub created: u64,
    /// Entries ferryd removed (GC, flush).
    pub removed: u64,
}

impl CtCounts {
    /// Entries the LRU evicted: created, less removed, less still there.
    pub fn evicted(&self, live: u64) -> u64 {
        self.created.saturating_sub(self.removed + live)
    }
}

/// Reads the `ct_stats` counters, summed over CPUs.
pub fn counts(stats: &PerCpuArray<impl std::borrow::Borrow<MapData>, u64>) -> CtCounts {
    let sum = |slot: u32| stats.get(&slot, 0).map_or(0, |v| v.iter().sum());
    CtCounts {
        created: sum(CT_STAT_CREATED),
        removed: sum(CT_STAT_REMOVED),
    }
}

impl Conntrack {
    pub fn open(pin: &Path) -> Result<Self, ConntrackError> {
        let path = pin.display().to_string();
        let fail = |reason: String| ConntrackError::Map {
            path: path.clone(),
            reason,
        };
        let data = MapData::from_pin(pin).map_err(|e| fail(e.to_string()))?;
        let map = BpfHashMap::try_from(Map::LruHashMap(data)).map_err(|e| fail(e.to_string()))?;
        let stats_pin = pin.with_file_name(crate::datapath::MAP_CT_STATS);
        let data = MapData::from_pin(&stats_pin).map_err(|e| fail(e.to_string()))?;
        let stats =
            PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|e| fail(e.to_string()))?;
        Ok(Self { map, stats, path })
    }

    /// Adds `n` to the entries ferryd removed (CPU 0's slot: ferryd is the
    /// only writer of this slot).
    fn record_removed(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let Ok(values) = self.stats.get(&CT_STAT_REMOVED, 0) else {
            return;
        };
        let mut values: Vec<u64> = values.iter().copied().collect();
        if let Some(first) = values.first_mut() {
            *first += n as u64;
        }
        if let Ok(values) = PerCpuValues::try_from(values)
            && let Err(e) = self.stats.set(CT_STAT_REMOVED, values, 0)
        {
            tracing::warn!(%e, "cannot count removed conntrack entries");
        }
    }

    fn snapshot(&self) -> HashMap<CtKey, CtEntry> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Every flow, decoded.
    pub fn list(&self, timeouts: &Timeouts) -> Vec<Flow> {
        let all = self.snapshot();
        let now = now_ns();
        // Every entry shows: a flow once (from its originator), a direction
        // whose other one is gone on its own, as `lone` (the GC removes it).
        let mut flows: Vec<Flow> = all
            .iter()
            .filter_map(|(k, e)| {
                let other = all.get(&pair_key(k, e));
                if !is_originator(e.kind) && other.is_some() {
                    return None;
                }
                let (state, timeout) = match other {
                    None => ("lone", LONE_GRACE),
                    Some(responder) => state(k.proto, Some(e), Some(responder), timeouts),
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
        let keys: Vec<CtKey> = self.map.keys().filter_map(Result::ok).collect();
        let removed = keys.iter().filter(|k| self.map.remove(k).is_ok()).count();
        self.record_removed(removed);
        removed
    }

    /// Expires idle flows; both directions go together. A direction whose
    /// other one is gone goes after `LONE_GRACE`. An entry refreshed by the
    /// datapath since the snapshot is kept. Returns how many entries were
    /// removed.
    pub fn collect(&mut self, timeouts: &Timeouts) -> usize {
        let all = self.snapshot();
        let now = now_ns();
        let mut removed = 0;
        for (key, entry) in &all {
            let pair = pair_key(key, entry);
            let other = all.get(&pair);
            // Judge each flow once, from its originator (or from a lone
            // responder whose originator is already gone).
            if !is_originator(entry.kind) && other.is_some() {
                continue;
            }
            let (originator, responder) = if is_originator(entry.kind) {
                (Some(entry), other)
            } else {
                (other, Some(entry))
            };
            let timeout = match other {
                None => LONE_GRACE,
                Some(_) => state(key.proto, originator, responder, timeouts).1,
            };
            let last = other.map_or(entry.last_seen_ns, |o| {
                o.last_seen_ns.max(entry.last_seen_ns)
            });
            if now.saturating_sub(last) < timeout.as_nanos() as u64 {
                continue;
            }
            for (k, seen) in [
                (key, entry.last_seen_ns),
                (&pair, other.map_or(0, |o| o.last_seen_ns)),
            ] {
                let unchanged = self.map.get(k, 0).is_ok_and(|e| e.last_seen_ns == seen);
                if unchanged && self.map.remove(k).is_ok() {
                    removed += 1;
                }
            }
        }
        self.record_removed(removed);
        removed
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use ferry_common::{CT_DNAT_REPLY, IPPROTO_UDP};

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
        let ack_only = entry(CT_SNAT_REPLY, CONT, 1, TCP_ACK);
        for (sent, answered, want) in [
            (&syn, &quiet, ("syn_sent", t.tcp_syn)),
            // A flood's handshake: answered, never completed.
            (&syn, &synack, ("syn_recv", t.tcp_syn_recv)),
            (&syn_ack_sent, &synack, ("established", t.tcp_established)),
            // An ACK without a SYN from the responder completes nothing.
            (&syn_ack_sent, &ack_only, ("syn_sent", t.tcp_syn)),
            (&syn_ack_sent, &fin, ("closing", t.tcp_closing)),
            (&rst, &synack, ("closing", t.tcp_closing)),
        ] {
            assert_eq!(state(IPPROTO_TCP, Some(sent), Some(answered), &t), want);
        }
        assert_eq!(
            state(IPPROTO_TCP, Some(&syn), None, &t),
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
            state(IPPROTO_UDP, Some(&sent), Some(&quiet), &t),
            ("udp_unreplied", t.udp_unreplied)
        );
        assert_eq!(
            state(IPPROTO_UDP, Some(&sent), Some(&answered), &t),
            ("udp", t.udp)
        );
        assert!(t.udp_unreplied < t.udp);
        assert_eq!(state(IPPROTO_ICMP, None, None, &t), ("icmp", t.icmp));
    }
}
