//! What the datapath's maps hold for ferryd's objects: endpoints and
//! their counters, published ports and theirs, host addresses, network
//! policies, the socket hooks' namespaces, drops; pruning what no longer
//! belongs to anything; and test runs of the programs.

use std::net::Ipv4Addr;

use aya::{
    maps::{HashMap as BpfHashMap, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{Program, ProgramError, TestRun as _, TestRunOptions},
    util::nr_cpus,
};
use ferry_common::{
    DropReason, Endpoint, EndpointStats, Ipv4Key, MacvlanParent, NetPolicy, PortKey, PortTarget,
};

use super::{
    BPF_NOEXIST, Datapath, DatapathError, Live, MAP_DROPS, MAP_ENDPOINTS, MAP_EP_STATS,
    MAP_HOST_ADDRS, MAP_MACVLAN_PARENTS, MAP_NETWORKS, MAP_PORT_STATS, MAP_PORTMAP, MAP_SOCK_NETNS,
    map_err,
};

impl Datapath {
    /// Lets the socket hooks act in the namespace with this cookie.
    pub fn add_netns(&mut self, cookie: u64, kind: u32) -> Result<(), DatapathError> {
        let mut map: BpfHashMap<_, u64, u32> =
            BpfHashMap::try_from(self.map(MAP_SOCK_NETNS)?).map_err(map_err(MAP_SOCK_NETNS))?;
        map.insert(cookie, kind, 0).map_err(map_err(MAP_SOCK_NETNS))
    }

    /// Sets a user-defined network's policy (`NET_*` bits).
    pub fn set_network(&mut self, net_id: u32, flags: u32) -> Result<(), DatapathError> {
        let mut map: BpfHashMap<_, u32, NetPolicy> =
            BpfHashMap::try_from(self.map(MAP_NETWORKS)?).map_err(map_err(MAP_NETWORKS))?;
        let inserted = map.insert(net_id, NetPolicy { flags }, 0);
        inserted.map_err(|e| self.insert_error(MAP_NETWORKS, e))
    }

    /// Records uplink `ifindex` as a macvlan parent with its own MAC and
    /// the address its containers are masqueraded to.
    pub fn set_macvlan_parent(
        &mut self,
        ifindex: u32,
        mac: [u8; 6],
        addr: Option<Ipv4Addr>,
    ) -> Result<(), DatapathError> {
        let mut map: BpfHashMap<_, u32, MacvlanParent> =
            BpfHashMap::try_from(self.map(MAP_MACVLAN_PARENTS)?)
                .map_err(map_err(MAP_MACVLAN_PARENTS))?;
        let parent = MacvlanParent {
            mac,
            pad: [0; 2],
            addr: addr.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
        };
        let inserted = map.insert(ifindex, parent, 0);
        inserted.map_err(|e| self.insert_error(MAP_MACVLAN_PARENTS, e))
    }

    /// Forgets a macvlan parent. Missing is fine.
    pub fn remove_macvlan_parent(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let mut map: BpfHashMap<_, u32, MacvlanParent> =
            BpfHashMap::try_from(self.map(MAP_MACVLAN_PARENTS)?)
                .map_err(map_err(MAP_MACVLAN_PARENTS))?;
        ignore_missing(map.remove(&ifindex)).map_err(map_err(MAP_MACVLAN_PARENTS))
    }

    /// Forgets a network's policy. Missing is fine.
    pub fn remove_network(&mut self, net_id: u32) -> Result<(), DatapathError> {
        let mut map: BpfHashMap<_, u32, NetPolicy> =
            BpfHashMap::try_from(self.map(MAP_NETWORKS)?).map_err(map_err(MAP_NETWORKS))?;
        ignore_missing(map.remove(&net_id)).map_err(map_err(MAP_NETWORKS))
    }

    /// Stops the socket hooks acting in that namespace. Missing is fine.
    pub fn remove_netns(&mut self, cookie: u64) -> Result<(), DatapathError> {
        let mut map: BpfHashMap<_, u64, u32> =
            BpfHashMap::try_from(self.map(MAP_SOCK_NETNS)?).map_err(map_err(MAP_SOCK_NETNS))?;
        ignore_missing(map.remove(&cookie)).map_err(map_err(MAP_SOCK_NETNS))
    }

    /// Publishes a container to the datapath. A new one gets the lowest
    /// free counter slot (`Endpoint::stats`, whatever the caller set),
    /// zeroed; one already there (adoption) keeps its slot and counters.
    /// A full map is [`DatapathError::Full`], with nothing left behind.
    pub fn add_endpoint(
        &mut self,
        ip: Ipv4Addr,
        mut endpoint: Endpoint,
    ) -> Result<(), DatapathError> {
        let key = Ipv4Key { ip: ip.octets() };
        let capacity = self.ep_stats_len()?;
        endpoint.stats = match self.endpoint(&key)? {
            Some(present) => present.stats,
            None => {
                let endpoints: BpfHashMap<_, Ipv4Key, Endpoint> =
                    BpfHashMap::try_from(self.map(MAP_ENDPOINTS)?)
                        .map_err(map_err(MAP_ENDPOINTS))?;
                // Slots in use are read off the endpoints themselves, so
                // there is no second record to drift from the map (a few
                // hundred lookups at most on a busy host).
                let used: std::collections::HashSet<u32> = endpoints
                    .iter()
                    .filter_map(Result::ok)
                    .map(|(_, e)| e.stats)
                    .collect();
                let free = (0..capacity).find(|s| !used.contains(s));
                let Some(free) = free else {
                    return Err(DatapathError::Full {
                        map: MAP_ENDPOINTS,
                        capacity,
                    });
                };
                self.zero_ep_stats(free)?;
                free
            }
        };
        let mut endpoints: BpfHashMap<_, Ipv4Key, Endpoint> =
            BpfHashMap::try_from(self.map(MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?;
        endpoints
            .insert(key, endpoint, 0)
            .map_err(|e| self.insert_error(MAP_ENDPOINTS, e))
    }

    /// The endpoint at `key`, if any.
    fn endpoint(&mut self, key: &Ipv4Key) -> Result<Option<Endpoint>, DatapathError> {
        let endpoints: BpfHashMap<_, Ipv4Key, Endpoint> =
            BpfHashMap::try_from(self.map(MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?;
        match endpoints.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map {
                map: MAP_ENDPOINTS,
                source,
            }),
        }
    }

    /// Slots in `ep_stats` (its capacity, which a pinned map keeps).
    fn ep_stats_len(&mut self) -> Result<u32, DatapathError> {
        let stats: PerCpuArray<_, EndpointStats> =
            PerCpuArray::try_from(self.map(MAP_EP_STATS)?).map_err(map_err(MAP_EP_STATS))?;
        Ok(stats.len())
    }

    fn zero_ep_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        let zeros = zeroed_counters()?;
        let mut stats: PerCpuArray<_, EndpointStats> =
            PerCpuArray::try_from(self.map(MAP_EP_STATS)?).map_err(map_err(MAP_EP_STATS))?;
        stats.set(slot, zeros, 0).map_err(map_err(MAP_EP_STATS))
    }

    /// What a failed insert into `name` means: the map is full, or the
    /// kernel's error.
    pub(super) fn insert_error(&self, name: &'static str, e: aya::maps::MapError) -> DatapathError {
        match &e {
            aya::maps::MapError::SyscallError(s)
                if s.io_error.raw_os_error() == Some(libc::E2BIG) =>
            {
                let capacity = aya::maps::MapInfo::from_pin(self.pin_dir.join(name))
                    .map_or(0, |info| info.max_entries());
                DatapathError::Full {
                    map: name,
                    capacity,
                }
            }
            _ => DatapathError::Map {
                map: name,
                source: e,
            },
        }
    }

    /// Removes a container from the datapath (its counter slot is free
    /// again, zeroed when next given out). Missing is fine.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), DatapathError> {
        let key = Ipv4Key { ip: ip.octets() };
        let mut endpoints: BpfHashMap<_, Ipv4Key, Endpoint> =
            BpfHashMap::try_from(self.map(MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?;
        ignore_missing(endpoints.remove(&key)).map_err(map_err(MAP_ENDPOINTS))
    }

    /// A container's counters, summed over CPUs (zero for an unknown one).
    pub fn endpoint_stats(&mut self, ip: Ipv4Addr) -> Result<EndpointStats, DatapathError> {
        let Some(endpoint) = self.endpoint(&Ipv4Key { ip: ip.octets() })? else {
            return Ok(EndpointStats::default());
        };
        let stats: PerCpuArray<_, EndpointStats> =
            PerCpuArray::try_from(self.map(MAP_EP_STATS)?).map_err(map_err(MAP_EP_STATS))?;
        let values = stats
            .get(&endpoint.stats, 0)
            .map_err(map_err(MAP_EP_STATS))?;
        Ok(summed(&values))
    }

    /// Drop counters by reason, summed over CPUs.
    pub fn drops(&mut self) -> Result<Vec<(DropReason, u64)>, DatapathError> {
        let drops: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map(MAP_DROPS)?).map_err(map_err(MAP_DROPS))?;
        DropReason::ALL
            .iter()
            .map(|reason| {
                let values = drops
                    .get(&(*reason as u32), 0)
                    .map_err(map_err(MAP_DROPS))?;
                Ok((*reason, values.iter().sum()))
            })
            .collect()
    }

    /// Runs `program` once on `frame` with BPF_PROG_TEST_RUN (no interface
    /// involved; the skb's ifindex is the loopback's, 1). Returns the verdict
    /// and the frame as the program left it.
    pub fn test_run(
        &mut self,
        program: &'static str,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), DatapathError> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let result = match self.ebpf.program_mut(program) {
            Some(Program::SchedClassifier(p)) => p.test_run(opts),
            Some(Program::Xdp(p)) => p.test_run(opts),
            _ => Err(ProgramError::UnexpectedProgramType),
        }
        .map_err(|source| DatapathError::Program {
            name: program,
            source,
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Makes a zeroed per-CPU counter entry for `key` in the stats map
    /// `name`, keeping one that exists (adoption keeps its counters).
    fn add_stats<K: aya::Pod>(&mut self, name: &'static str, key: K) -> Result<(), DatapathError> {
        let zeros = zeroed_counters()?;
        let mut stats: PerCpuHashMap<_, K, EndpointStats> =
            PerCpuHashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        match stats.insert(key, zeros, BPF_NOEXIST) {
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Err(e) => Err(self.insert_error(name, e)),
            Ok(()) => Ok(()),
        }
    }

    /// Counters of `key` in the stats map `name`, summed over CPUs.
    fn read_stats<K: aya::Pod>(
        &mut self,
        name: &'static str,
        key: &K,
    ) -> Result<EndpointStats, DatapathError> {
        let stats: PerCpuHashMap<_, K, EndpointStats> =
            PerCpuHashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        match stats.get(key, 0) {
            Ok(values) => Ok(summed(&values)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(EndpointStats::default()),
            Err(source) => Err(DatapathError::Map { map: name, source }),
        }
    }

    /// Traffic of a published port through the uplink (rx: to the
    /// container, tx: its replies).
    pub fn port_stats(&mut self, key: &PortKey) -> Result<EndpointStats, DatapathError> {
        self.read_stats(MAP_PORT_STATS, key)
    }

    /// Publishes a host port: packets for it are DNAT'ed to `target`. A
    /// full map is [`DatapathError::Full`], with nothing left behind.
    pub fn add_port(&mut self, key: PortKey, target: PortTarget) -> Result<(), DatapathError> {
        let mut ports: BpfHashMap<_, PortKey, PortTarget> =
            BpfHashMap::try_from(self.map(MAP_PORTMAP)?).map_err(map_err(MAP_PORTMAP))?;
        let inserted = ports.insert(key, target, 0);
        // Counters second, as in `add_endpoint`.
        let added = match inserted {
            Ok(()) => self.add_stats(MAP_PORT_STATS, key),
            Err(e) => Err(self.insert_error(MAP_PORTMAP, e)),
        };
        if added.is_err() {
            let _ = self.remove_port(&key);
        }
        added
    }

    /// Unpublishes a host port. Missing is fine.
    pub fn remove_port(&mut self, key: &PortKey) -> Result<(), DatapathError> {
        let mut ports: BpfHashMap<_, PortKey, PortTarget> =
            BpfHashMap::try_from(self.map(MAP_PORTMAP)?).map_err(map_err(MAP_PORTMAP))?;
        ignore_missing(ports.remove(key)).map_err(map_err(MAP_PORTMAP))?;
        let mut stats: PerCpuHashMap<_, PortKey, EndpointStats> =
            PerCpuHashMap::try_from(self.map(MAP_PORT_STATS)?).map_err(map_err(MAP_PORT_STATS))?;
        ignore_missing(stats.remove(key)).map_err(map_err(MAP_PORT_STATS))
    }

    /// Makes `host_addrs` hold exactly `addrs`.
    pub fn set_host_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<(), DatapathError> {
        let mut map: BpfHashMap<_, Ipv4Key, u32> =
            BpfHashMap::try_from(self.map(MAP_HOST_ADDRS)?).map_err(map_err(MAP_HOST_ADDRS))?;
        let wanted: Vec<Ipv4Key> = addrs.iter().map(|a| Ipv4Key { ip: a.octets() }).collect();
        let stale: Vec<Ipv4Key> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            ignore_missing(map.remove(&key)).map_err(map_err(MAP_HOST_ADDRS))?;
        }
        for key in wanted {
            map.insert(key, 1, 0).map_err(map_err(MAP_HOST_ADDRS))?;
        }
        Ok(())
    }

    /// Removes the entries that belong to nothing alive: endpoints for
    /// addresses not in `live.ips`, published ports and
    /// their counters not in `live.ports`, socket-hook namespaces not in
    /// `live.netns`. What a crash between two steps of a run or a removal
    /// leaves; returns a line for each entry removed.
    pub fn prune(&mut self, live: &Live) -> Result<Vec<String>, DatapathError> {
        let mut removed = Vec::new();
        let endpoints: BpfHashMap<_, Ipv4Key, Endpoint> =
            BpfHashMap::try_from(self.map(MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?;
        let ips: Vec<Ipv4Key> = endpoints.keys().filter_map(Result::ok).collect();
        for key in ips {
            let ip = Ipv4Addr::from(key.ip);
            if !live.ips.contains(&ip) {
                self.remove_endpoint(ip)?;
                removed.push(format!("endpoint {ip}"));
            }
        }
        let ports: BpfHashMap<_, PortKey, PortTarget> =
            BpfHashMap::try_from(self.map(MAP_PORTMAP)?).map_err(map_err(MAP_PORTMAP))?;
        let mut keys: Vec<PortKey> = ports.keys().filter_map(Result::ok).collect();
        let port_stats: PerCpuHashMap<_, PortKey, EndpointStats> =
            PerCpuHashMap::try_from(self.map(MAP_PORT_STATS)?).map_err(map_err(MAP_PORT_STATS))?;
        keys.extend(port_stats.keys().filter_map(Result::ok));
        keys.sort_by_key(|k| (k.ip, k.port, k.proto));
        keys.dedup();
        for key in keys {
            if !live.ports.contains(&key) {
                self.remove_port(&key)?;
                removed.push(format!(
                    "published port {}:{}/{}",
                    Ipv4Addr::from(key.ip),
                    u16::from_be_bytes(key.port),
                    key.proto
                ));
            }
        }
        let policies: BpfHashMap<_, u32, NetPolicy> =
            BpfHashMap::try_from(self.map(MAP_NETWORKS)?).map_err(map_err(MAP_NETWORKS))?;
        let net_ids: Vec<u32> = policies.keys().filter_map(Result::ok).collect();
        for net_id in net_ids {
            if !live.networks.contains(&net_id) {
                self.remove_network(net_id)?;
                removed.push(format!("network policy {net_id}"));
            }
        }
        let netns: BpfHashMap<_, u64, u32> =
            BpfHashMap::try_from(self.map(MAP_SOCK_NETNS)?).map_err(map_err(MAP_SOCK_NETNS))?;
        let cookies: Vec<u64> = netns.keys().filter_map(Result::ok).collect();
        for cookie in cookies {
            if !live.netns.contains(&cookie) {
                self.remove_netns(cookie)?;
                removed.push(format!("socket-hook namespace {cookie}"));
            }
        }
        Ok(removed)
    }

    /// Number of endpoints in the map.
    pub fn endpoint_count(&mut self) -> Result<usize, DatapathError> {
        let endpoints: BpfHashMap<_, Ipv4Key, Endpoint> =
            BpfHashMap::try_from(self.map(MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?;
        Ok(endpoints.keys().filter(Result::is_ok).count())
    }
}

/// Zeroed counters, one per possible CPU (as per-CPU map writes take).
fn zeroed_counters() -> Result<PerCpuValues<EndpointStats>, DatapathError> {
    let cpus = nr_cpus().map_err(|(what, e)| DatapathError::Cpus(format!("{what}: {e}")))?;
    PerCpuValues::try_from(vec![EndpointStats::default(); cpus])
        .map_err(|e| DatapathError::Cpus(e.to_string()))
}

/// Per-CPU counters summed.
fn summed(values: &PerCpuValues<EndpointStats>) -> EndpointStats {
    values
        .iter()
        .fold(EndpointStats::default(), |acc, v| acc.merged(*v))
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}
