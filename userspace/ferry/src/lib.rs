//! ferry: containers with bridge-mode isolation whose forwarding runs in eBPF.
//!
//! The library holds everything `ferryd` (the daemon) and `ferry` (the CLI)
//! share. Each module owns one kind of kernel object or one piece of state.

pub mod api;
pub mod cgroup;
pub mod client;
pub mod config;
pub mod conntrack;
pub mod container;
pub mod daemon;
pub mod datapath;
pub mod format;
pub mod ipam;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod netns;
pub mod portmap;
pub mod preflight;
pub mod rootfs;
pub mod state;
pub mod validate;
