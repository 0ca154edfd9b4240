//! ferry: containers with bridge-mode isolation whose forwarding runs in eBPF.
//!
//! This crate is the daemon (`ferryd`: API, state, orchestration) and the
//! CLI (`ferry`). The network agent is `ferry-net`, the container runtime
//! `ferry-runtime`; ferryd is where the two meet. Their modules are
//! re-exported under their own names, so the daemon reads `crate::datapath`
//! or `crate::cgroup` whichever crate owns it.

pub mod api;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod format;
pub mod invariants;
pub mod metrics;
pub mod state;
pub mod validate;

pub use ferry_api::client;
pub use ferry_net::{conntrack, datapath, dns, ipam, link, netns, network, portmap, preflight};
pub use ferry_runtime::{attach, cgroup, container, logs, rootfs, seccomp, userns};

/// An error and its causes on one line, each cause once: many errors here
/// already name their source in their own message, which anyhow's `{:#}`
/// would repeat.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::from_raw_os_error(libc::EBUSY);
        let inner =
            anyhow::Error::new(io).context("remove /x: Device or resource busy (os error 16)");
        assert_eq!(
            error_chain(&inner),
            "remove /x: Device or resource busy (os error 16)"
        );
        let outer = inner.context("cannot start");
        assert_eq!(
            error_chain(&outer),
            "cannot start: remove /x: Device or resource busy (os error 16)"
        );
    }
}
