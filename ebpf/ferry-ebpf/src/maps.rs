//! Every map of the datapath. Names are the kernel object names shown by
//! `bpftool map` and the file names under /sys/fs/bpf/ferry/, hence
//! lowercase; BTF lets `bpftool map dump` print their fields.
#![expect(
    non_upper_case_globals,
    reason = "map names are kernel object names shown by bpftool"
)]

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, SkStorage},
    macros::btf_map,
};
use ferry_common::{
    CT_STATS, CtEntry, CtKey, DropReason, Endpoint, EndpointStats, FragKey, Ipv4Key, MAX_CT,
    MAX_CT_NEW, MAX_ENDPOINTS, MAX_FRAGS, MAX_HOST_ADDRS, MAX_MACVLAN_PARENTS, MAX_NETNS,
    MAX_NETWORKS, MAX_PORTMAPS, MAX_REMOTES, MAX_SOCK_REVNAT, MacvlanParent, NetPolicy, PortKey,
    PortTarget, RemoteNode, SockPeer, SockRevKey,
};

/// Traffic of each published port that crossed the uplink, by its
/// `portmap` key. Entries are made and removed by ferryd with the publish.
#[btf_map]
pub static port_stats: PerCpuHashMap<PortKey, EndpointStats, { MAX_PORTMAPS as usize }> =
    PerCpuHashMap::new();

/// Conntrack bookkeeping (`CT_STAT_*`), from which evictions follow.
#[btf_map]
pub static ct_stats: PerCpuArray<u64, { CT_STATS as usize }> = PerCpuArray::new();

/// Run-time switches written by ferryd: slot `CONFIG_FLAGS` holds the
/// `CONFIG_*` bits (`ferry debug datapath on|off`).
#[btf_map]
pub static config: Array<u32, 1> = Array::new();

/// Local containers by IPv4 address. Written by ferryd only.
#[btf_map]
pub static endpoints: HashMap<Ipv4Key, Endpoint, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// Uplinks that are macvlan parents, by ifindex: their own MAC. Written
/// by ferryd only.
#[btf_map]
pub static macvlan_parents: HashMap<u32, MacvlanParent, { MAX_MACVLAN_PARENTS as usize }> =
    HashMap::new();

/// The other members of the cluster: each one's block of container
/// addresses and its own address, by longest prefix. Written by ferryd
/// only, from the cluster's view; empty on a single host, where a lookup
/// costs next to nothing.
#[btf_map]
pub static remotes: LpmTrie<[u8; 4], RemoteNode, { MAX_REMOTES as usize }> = LpmTrie::new();

/// Policy of each user-defined network by `Endpoint::net_id` (`NET_*`
/// bits). Written by ferryd only.
#[btf_map]
pub static networks: HashMap<u32, NetPolicy, { MAX_NETWORKS as usize }> = HashMap::new();

/// Per-container packet and byte counters at each endpoint's
/// `Endpoint::stats` index. ferryd zeroes a slot when it gives it to a new
/// endpoint; the programs only add to it.
#[btf_map]
pub static ep_stats: PerCpuArray<EndpointStats, { MAX_ENDPOINTS as usize }> = PerCpuArray::new();

/// Dropped packets, indexed by `DropReason`.
#[btf_map]
pub static drops: PerCpuArray<u64, { DropReason::COUNT as usize }> = PerCpuArray::new();

/// Published ports: (host address or 0.0.0.0, port, protocol) -> container
/// address and port. Written by ferryd only.
#[btf_map]
pub static portmap: HashMap<PortKey, PortTarget, { MAX_PORTMAPS as usize }> = HashMap::new();

/// The host's own IPv4 addresses: a publish on 0.0.0.0 applies to packets
/// for these only (Docker's `--dst-type LOCAL`). Written by ferryd.
#[btf_map]
pub static host_addrs: HashMap<Ipv4Key, u32, { MAX_HOST_ADDRS as usize }> = HashMap::new();

/// Connection tracking of assured flows (see `ferry_common::ct_assured`):
/// one entry per flow direction, moved here from `ct_new` by the datapath
/// and back when the flow begins to close. A plain hash map: nothing is
/// evicted to make room, only ferryd's GC removes idle flows, so no flood
/// of new flows can push out an established one. When it is full, new
/// flows stay in `ct_new` (counted as `CT_STAT_ASSURED_FULL`).
#[btf_map]
pub static ct: HashMap<CtKey, CtEntry, { MAX_CT as usize }> = HashMap::new();

/// Connection tracking of flows not yet assured: half-open TCP, unanswered
/// UDP, closing flows. Looked up after `ct`. An LRU map: a flood evicts
/// its own kind. Per-CPU LRU lists (BPF_F_NO_COMMON_LRU): under a high
/// new-connection rate the shared LRU list's lock showed in the tail
/// latency; each CPU then evicts from its own share of the capacity.
#[btf_map]
pub static ct_new: LruHashMap<
    CtKey,
    CtEntry,
    { MAX_CT_NEW as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

/// Network namespaces (by cookie) whose sockets the cgroup hooks translate:
/// `NETNS_HOST` or `NETNS_CONTAINER`. Everything else is left alone.
#[btf_map]
pub static sock_netns: HashMap<u64, u32, { MAX_NETNS as usize }> = HashMap::new();

/// What an unconnected UDP socket's datagram was sent to before `sendmsg`
/// translated it, by socket and container address, so recvmsg reports the
/// published address as the source of the answer.
#[btf_map]
pub static sock_revnat: LruHashMap<SockRevKey, PortTarget, { MAX_SOCK_REVNAT as usize }> =
    LruHashMap::new();

/// What a connected socket asked for before `connect` was translated, kept
/// on the socket itself (socket-local storage, freed with the socket), so
/// getpeername and recvmsg report the published address. One peer per
/// socket, so no key space to share, fill or evict: a table that every
/// new connection inserted into cost a local connection ~8% here.
#[btf_map]
pub static sock_peer: SkStorage<SockPeer> = SkStorage::new();

/// Translations of fragmented datagrams: the first fragment (which carries
/// the ports) records what was done, later fragments (which do not) repeat
/// it for their address. Values are `ct` entries: kind, new address, where
/// to send.
#[btf_map]
pub static frags: LruHashMap<FragKey, CtEntry, { MAX_FRAGS as usize }> = LruHashMap::new();
