//! ferry's container runtime: the init stage and its monitor (`container`),
//! the root file system (`rootfs`), cgroups (`cgroup`) and the workload's
//! logs (`logs`).
//!
//! It knows nothing of networking beyond "start in this network namespace":
//! the daemon asks the network agent (`ferry-net`) for a container's
//! interfaces. It must never import `ferry-net`.

pub mod attach;
pub mod caps;
pub mod cgroup;
pub mod container;
pub mod logs;
mod privileges;
pub mod rootfs;
pub mod seccomp;
pub mod user;
pub mod userns;
