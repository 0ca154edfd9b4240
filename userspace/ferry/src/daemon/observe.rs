//! What ferryd shows of the datapath: attachments, maps, drops, counters,
//! metrics and conntrack; and the background tasks that keep it tidy (the
//! conntrack GC, the datapath log reader, the host-address watch).

use std::{net::Ipv4Addr, path::Path, sync::Arc, time::Duration};

use ferry_common::DropReason;
use ferry_net::agent::port_key;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

use super::{Daemon, Inner};
use crate::{
    api::{ApiError, AttachmentJson, ConntrackJson, DatapathJson, MapJson, NetCounters},
    cgroup::Usage,
    conntrack::{Conntrack, Flow, Timeouts},
    datapath,
    metrics::{ApiCounters, Family},
    portmap::PortMapping,
    state::{ContainerRecord, Status},
};

impl Daemon {
    pub async fn datapath_info(&self) -> Result<DatapathJson, ApiError> {
        let mut inner = self.inner.lock().await;
        let internal = |e: datapath::DatapathError| ApiError::Internal(e.to_string());
        let drops = inner.agent.datapath.drops().map_err(internal)?;
        let mut attachments = Vec::new();
        for a in inner.agent.datapath.attachments() {
            let mode = if a.hook == "xdp" {
                inner
                    .agent
                    .netlink
                    .xdp_mode(&a.target)
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .unwrap_or("detached")
            } else {
                ""
            };
            attachments.push(AttachmentJson {
                target: a.target,
                program: a.program.to_owned(),
                hook: a.hook.to_owned(),
                mode: mode.to_owned(),
            });
        }
        let fill = inner.agent.datapath.map_fill().map_err(internal)?;
        let conntrack = conntrack_json(inner.agent.datapath.ct_counts().map_err(internal)?, &fill);
        let maps = fill
            .into_iter()
            .map(|m| MapJson {
                name: m.name.to_owned(),
                kind: m.kind,
                entries: m.entries,
                capacity: m.capacity,
            })
            .collect();
        Ok(DatapathJson {
            conntrack,
            debug_log: inner.agent.datapath.debug_log().map_err(internal)?,
            pin_dir: inner.agent.datapath.pin_dir().display().to_string(),
            endpoints: inner.agent.datapath.endpoint_count().map_err(internal)?,
            programs: datapath::PROGRAMS.iter().map(|p| (*p).to_owned()).collect(),
            attachments,
            maps,
            drops: drops
                .into_iter()
                .map(|(reason, n): (DropReason, u64)| (reason.name().to_owned(), n))
                .collect(),
        })
    }

    pub fn api_counters(&self) -> &ApiCounters {
        &self.api
    }

    /// Switches the datapath's debug logging; returns the new state.
    pub async fn set_debug_log(&self, on: bool) -> Result<bool, ApiError> {
        let mut inner = self.inner.lock().await;
        let internal = |e: datapath::DatapathError| ApiError::Internal(e.to_string());
        inner.agent.datapath.set_debug_log(on).map_err(internal)?;
        info!(on, "datapath debug logging");
        inner.agent.datapath.debug_log().map_err(internal)
    }

    /// Everything `GET /metrics` shows, in the Prometheus text format.
    pub async fn metrics_text(&self) -> Result<String, ApiError> {
        let internal = |e: datapath::DatapathError| ApiError::Internal(e.to_string());
        let mut inner = self.inner.lock().await;
        let records: Vec<ContainerRecord> = inner.containers.values().cloned().collect();
        let mut rows = Vec::new();
        let mut ports = Vec::new();
        for r in &records {
            for (m, c) in inner.port_counters(r)? {
                ports.push((r.name.clone(), m, c));
            }
        }
        for r in records {
            let net = inner.counters(&r)?;
            let usage = if r.status == Status::Running {
                inner.cgroups.usage(&r.id)
            } else {
                Usage::default()
            };
            rows.push((r, net, usage));
        }
        let drops = inner.agent.datapath.drops().map_err(internal)?;
        let maps = inner.agent.datapath.map_fill().map_err(internal)?;
        let conntrack = conntrack_json(inner.agent.datapath.ct_counts().map_err(internal)?, &maps);
        drop(inner);

        let mut out = String::new();
        let mut f = Family::new(
            &mut out,
            "ferry_containers",
            "gauge",
            "Containers known to ferryd, by status.",
        );
        for status in [Status::Running, Status::Exited] {
            let n = rows.iter().filter(|(r, _, _)| r.status == status).count();
            f.sample(&[("status", status.as_str())], n);
        }
        type Pick = fn(&NetCounters, &Usage) -> u64;
        let per_container: [(&'static str, &str, &str, Pick); 8] = [
            (
                "ferry_container_rx_packets_total",
                "counter",
                "Packets the datapath delivered to the container.",
                |n, _| n.rx_packets,
            ),
            (
                "ferry_container_rx_bytes_total",
                "counter",
                "Bytes the datapath delivered to the container.",
                |n, _| n.rx_bytes,
            ),
            (
                "ferry_container_tx_packets_total",
                "counter",
                "Packets the container sent into the datapath.",
                |n, _| n.tx_packets,
            ),
            (
                "ferry_container_tx_bytes_total",
                "counter",
                "Bytes the container sent into the datapath.",
                |n, _| n.tx_bytes,
            ),
            (
                "ferry_container_cpu_nanoseconds_total",
                "counter",
                "CPU time of the container's processes.",
                |_, u| u.cpu_ns,
            ),
            (
                "ferry_container_cpu_throttled_periods_total",
                "counter",
                "CFS periods in which the CPU quota throttled the container.",
                |_, u| u.nr_throttled,
            ),
            (
                "ferry_container_memory_bytes",
                "gauge",
                "Memory in use, reclaimable page cache left out.",
                |_, u| u.memory,
            ),
            (
                "ferry_container_pids",
                "gauge",
                "Processes in the container.",
                |_, u| u.pids,
            ),
        ];
        for (name, kind, help, pick) in per_container {
            let mut f = Family::new(&mut out, name, kind, help);
            for (r, net, usage) in &rows {
                f.sample(
                    &[("container", &r.name), ("id", r.short_id())],
                    pick(net, usage),
                );
            }
        }
        type PickNet = fn(&NetCounters) -> u64;
        let per_port: [(&'static str, &str, PickNet); 4] = [
            (
                "ferry_port_rx_packets_total",
                "Packets through the uplink to a published port.",
                |n| n.rx_packets,
            ),
            (
                "ferry_port_rx_bytes_total",
                "Bytes through the uplink to a published port.",
                |n| n.rx_bytes,
            ),
            (
                "ferry_port_tx_packets_total",
                "Reply packets of a published port to the uplink.",
                |n| n.tx_packets,
            ),
            (
                "ferry_port_tx_bytes_total",
                "Reply bytes of a published port to the uplink.",
                |n| n.tx_bytes,
            ),
        ];
        for (name, help, pick) in per_port {
            let mut f = Family::new(&mut out, name, "counter", help);
            for (container, m, c) in &ports {
                let ip = m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string();
                let port = m.host_port.to_string();
                let proto = m.proto.to_string();
                f.sample(
                    &[
                        ("container", container),
                        ("host_ip", &ip),
                        ("host_port", &port),
                        ("proto", &proto),
                    ],
                    pick(c),
                );
            }
        }
        let mut f = Family::new(
            &mut out,
            "ferry_drops_total",
            "counter",
            "Packets the datapath dropped, by reason.",
        );
        for (reason, n) in &drops {
            f.sample(&[("reason", reason.name())], n);
        }
        let mut f = Family::new(
            &mut out,
            "ferry_map_entries",
            "gauge",
            "Entries in each datapath map (arrays count as full).",
        );
        for m in &maps {
            f.sample(&[("map", m.name)], m.entries);
        }
        let mut f = Family::new(
            &mut out,
            "ferry_map_capacity",
            "gauge",
            "Capacity (max_entries) of each datapath map.",
        );
        for m in &maps {
            f.sample(&[("map", m.name)], m.capacity);
        }
        let mut f = Family::new(
            &mut out,
            "ferry_map_fill_ratio",
            "gauge",
            "Entries over capacity of each datapath map (0 to 1).",
        );
        for m in &maps {
            f.sample(
                &[("map", m.name)],
                m.entries as f64 / f64::from(m.capacity.max(1)),
            );
        }
        let mut f = Family::new(
            &mut out,
            "ferry_conntrack_entries",
            "gauge",
            "Tracked flow entries (two per flow: one each way), by table: ct (assured) and \
             ct_new (not yet assured).",
        );
        f.sample(&[("table", datapath::MAP_CT)], conntrack.assured);
        f.sample(
            &[("table", datapath::MAP_CT_NEW)],
            conntrack.entries - conntrack.assured,
        );
        let mut f = Family::new(
            &mut out,
            "ferry_conntrack_created_total",
            "counter",
            "Conntrack entries that came into ct_new: new flows, and flows that began to close.",
        );
        f.sample(&[], conntrack.created);
        let mut f = Family::new(
            &mut out,
            "ferry_conntrack_promotions_total",
            "counter",
            "Conntrack entries moved into ct when their flow was assured.",
        );
        f.sample(&[], conntrack.promoted);
        let mut f = Family::new(
            &mut out,
            "ferry_conntrack_evictions_total",
            "counter",
            "Conntrack entries evicted to make room, by class: unassured (ct_new, an LRU map) \
             and assured (ct, which evicts nothing).",
        );
        f.sample(&[("class", "unassured")], conntrack.evicted_unassured);
        f.sample(&[("class", "assured")], conntrack.evicted_assured);
        let mut f = Family::new(
            &mut out,
            "ferry_conntrack_assured_full_total",
            "counter",
            "Promotions refused because ct was full; those flows stayed in ct_new.",
        );
        f.sample(&[], conntrack.assured_full);
        let mut f = Family::new(
            &mut out,
            "ferry_api_requests_total",
            "counter",
            "Requests to ferryd's API, by method, route and status.",
        );
        for ((method, route, status), n) in self.api.snapshot() {
            f.sample(
                &[
                    ("method", &method),
                    ("route", &route),
                    ("status", &status.to_string()),
                ],
                n,
            );
        }
        Ok(out)
    }

    /// Keeps `host_addrs` in sync with the host: a netlink subscription to
    /// IPv4 address changes triggers a resync, so a publish on every
    /// address also covers addresses added later (DHCP, a second IP).
    pub(super) fn watch_host_addrs(self: &Arc<Self>) -> anyhow::Result<()> {
        let (connection, _, mut events) =
            rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Ipv4Ifaddr])?;
        tokio::spawn(connection);
        let daemon = Arc::clone(self);
        tokio::spawn(async move {
            use futures::StreamExt as _;
            while events.next().await.is_some() {
                let mut inner = daemon.inner.lock().await;
                if let Err(e) = inner.agent.refresh_host_addrs().await {
                    warn!(%e, "cannot resync host addresses");
                }
            }
        });
        Ok(())
    }

    /// Tracked flows, decoded; only those of one container (by name or
    /// ID) and one protocol if given.
    pub async fn conntrack(
        &self,
        container: Option<&str>,
        proto: Option<&str>,
    ) -> Result<Vec<Flow>, ApiError> {
        if let Some(p) = proto
            && !["tcp", "udp", "icmp"].contains(&p)
        {
            return Err(ApiError::BadRequest(format!(
                "unknown protocol {p:?}: tcp, udp or icmp"
            )));
        }
        let ip = match container {
            Some(c) => {
                let inner = self.inner.lock().await;
                let record = inner.find(c)?;
                match &record.network {
                    Some(net) => Some(net.ip),
                    None => return Ok(Vec::new()),
                }
            }
            None => None,
        };
        let ct = Conntrack::open(&self.ct_pins).map_err(|e| ApiError::Internal(e.to_string()))?;
        let timeouts = self.ct_timeouts;
        let flows = tokio::task::spawn_blocking(move || ct.list(&timeouts))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(flows
            .into_iter()
            .filter(|f| ip.is_none_or(|ip| f.involves(ip)))
            .filter(|f| proto.is_none_or(|p| f.proto == p))
            .collect())
    }

    /// Forgets every tracked flow; returns how many entries went.
    pub async fn conntrack_flush(&self) -> Result<usize, ApiError> {
        let mut ct =
            Conntrack::open(&self.ct_pins).map_err(|e| ApiError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || ct.flush())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
}

impl Inner {
    /// Traffic of each of the container's published ports.
    pub(super) fn port_counters(
        &mut self,
        record: &ContainerRecord,
    ) -> Result<Vec<(PortMapping, NetCounters)>, ApiError> {
        record
            .ports
            .iter()
            .map(|m| {
                let s = self
                    .agent
                    .datapath
                    .port_stats(&port_key(m))
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                Ok((*m, NetCounters::from(s)))
            })
            .collect()
    }

    /// A container's datapath counters (zero without a bridge network).
    pub(super) fn counters(&mut self, record: &ContainerRecord) -> Result<NetCounters, ApiError> {
        let Some(net) = &record.network else {
            return Ok(NetCounters::default());
        };
        let s = self
            .agent
            .datapath
            .endpoint_stats(net.ip)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(NetCounters::from(s))
    }
}

/// Drains the programs' aya-log ring buffer into ferryd's log whenever it
/// has records (only while `ferry debug datapath on`).
pub(super) fn spawn_log_reader(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> anyhow::Result<()> {
    // SAFETY: the AsyncFd owns the logger, whose ring buffer fd therefore
    // stays open and the same for the AsyncFd's whole life.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }?;
    tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!(%e, "datapath log reader stopped");
                    return;
                }
            }
        }
    });
    Ok(())
}

/// The conntrack GC: every `interval`, one pass on a blocking thread with
/// its own fd of the pinned map, so neither the API nor the datapath waits
/// for it. Each pass is a short task: a shutting-down runtime never waits
/// on an endless one.
pub(super) fn spawn_ct_gc(
    pin: &Path,
    timeouts: Timeouts,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut ct = Conntrack::open(pin)?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let pass = tokio::task::spawn_blocking(move || {
                let removed = ct.collect(&timeouts);
                (ct, removed)
            });
            match pass.await {
                Ok((back, removed)) => {
                    ct = back;
                    if removed > 0 {
                        tracing::debug!(removed, map = ct.path(), "conntrack GC");
                    }
                }
                Err(e) => {
                    warn!(%e, "conntrack GC stopped");
                    return;
                }
            }
        }
    });
    Ok(())
}

/// Conntrack entries now (the `ct` and `ct_new` maps' fill, counted once
/// by `map_fill`) and since the maps were made (`ct_stats`), evictions
/// included.
fn conntrack_json(counts: crate::conntrack::CtCounts, fill: &[datapath::MapFill]) -> ConntrackJson {
    let live = |name: &str| {
        fill.iter()
            .find(|m| m.name == name)
            .map_or(0, |m| m.entries as u64)
    };
    let (assured, new) = (live(datapath::MAP_CT), live(datapath::MAP_CT_NEW));
    let evicted_unassured = counts.new.evicted(new);
    let evicted_assured = counts.assured.evicted(assured);
    ConntrackJson {
        entries: assured + new,
        assured,
        created: counts.new.entered,
        promoted: counts.assured.entered,
        removed: counts.new.removed + counts.assured.removed,
        evicted: evicted_unassured + evicted_assured,
        evicted_unassured,
        evicted_assured,
        assured_full: counts.assured_full,
    }
}
