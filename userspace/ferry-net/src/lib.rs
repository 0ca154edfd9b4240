//! ferry's network agent: everything that gives a network namespace an
//! address on ferry's eBPF datapath, whoever made the namespace.
//!
//! It owns the pinned programs and maps (`datapath`), the veths, routes and
//! neighbours (`link`, `netns`), networks and their addresses (`network`,
//! `ipam`), published ports (`portmap`), the embedded DNS (`dns`) and the
//! conntrack table (`conntrack`). ferry's own runtime, the CNI plugin and the
//! Docker plugin are its clients. It must never import the runtime
//! (`ferry-runtime`): a plugin links this crate's callers, not containers.

pub mod agent;
pub mod conntrack;
pub mod datapath;
pub mod dns;
pub mod endpoint;
pub mod files;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod network;
pub mod portmap;
pub mod preflight;
