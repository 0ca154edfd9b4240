//! Every map of the datapath. Names are the kernel object names shown by
//! `bpftool map` and the file names under /sys/fs/bpf/ferry/, hence
//! lowercase; BTF lets `bpftool map dump` print their fields.
#![expect(
    non_upper_case_globals,
    reason = "map names are kernel object names shown by bpftool"
)]

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use ferry_common::{DropReason, Endpoint, EndpointKey, EndpointStats, MAX_ENDPOINTS};

/// Local containers by IPv4 address. Written by ferryd only.
#[btf_map]
pub static endpoints: HashMap<EndpointKey, Endpoint, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// Per-container packet and byte counters. ferryd creates the entry with the
/// endpoint (and removes it with it); the programs only add to it.
#[btf_map]
pub static ep_stats: PerCpuHashMap<EndpointKey, EndpointStats, { MAX_ENDPOINTS as usize }> =
    PerCpuHashMap::new();

/// Dropped packets, indexed by `DropReason`.
#[btf_map]
pub static drops: PerCpuArray<u64, { DropReason::COUNT as usize }> = PerCpuArray::new();
