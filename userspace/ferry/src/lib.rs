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
pub mod dns;
pub mod format;
pub mod ipam;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod netns;
pub mod network;
pub mod portmap;
pub mod preflight;
pub mod rootfs;
pub mod state;
pub mod validate;

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
