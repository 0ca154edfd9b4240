//! The endpoint API: a network namespace made by another engine, attached
//! to a ferry network (`POST /endpoints`), found (`GET /endpoints`),
//! checked (`POST /endpoints/check`), detached (`DELETE /endpoints`) and
//! collected (`POST /endpoints/gc`).
//!
//! An endpoint is named by its engine: `kind` (`cni`, `docker`) and the
//! engine's own `key` (CNI: container ID and interface name; Docker: the
//! endpoint ID). ferryd gives it an `id` of its own as well.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The default route's next hop inside every endpoint: answered by the
/// host side of its veth (a permanent neighbour entry), never routed.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// One published port, as an engine asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    /// `None`: every address of the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
    /// 0: any free port.
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
}

/// `POST /endpoints`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndpointCreate {
    pub kind: String,
    pub key: String,
    /// What `ferry ps`, DNS and port conflicts call it (the engine's
    /// container name when it says one).
    #[serde(default)]
    pub name: String,
    /// The network namespace, by path (`/run/netns/X`, `/proc/PID/ns/net`).
    pub netns: String,
    /// The interface inside the namespace.
    pub ifname: String,
    /// The ferry network.
    pub network: String,
    /// A static address, else the network's next free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// A static MAC (`aa:bb:cc:dd:ee:ff`), else one derived from the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default)]
    pub ports: Vec<PortMap>,
}

/// An endpoint, as ferryd answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointJson {
    pub id: String,
    pub kind: String,
    pub key: String,
    pub name: String,
    pub netns: String,
    pub ifname: String,
    pub network: String,
    /// The endpoint's address; its prefix is always /32.
    pub ip: Ipv4Addr,
    pub mac: String,
    pub gateway: Ipv4Addr,
    /// The network's subnet, for engines that show one.
    pub subnet: String,
    pub host_ifname: String,
    pub host_mac: String,
    /// The published ports, host ports as allocated.
    pub ports: Vec<PortMap>,
    /// Unix seconds.
    pub created: u64,
}

/// `POST /endpoints/gc`: every endpoint of `kind` whose key starts with
/// `scope` (a CNI network's name and a slash, a Docker network's ID) and is
/// not in `keep` goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndpointGc {
    pub kind: String,
    pub scope: String,
    pub keep: Vec<String>,
}

/// How many endpoints a DELETE or a GC removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: usize,
}

/// The query of `GET`/`DELETE /endpoints` and `POST /endpoints/check`.
pub fn query(kind: &str, key: &str) -> String {
    format!("kind={}&key={}", encode(kind), encode(key))
}

/// Percent-encodes everything but unreserved characters (a query value).
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_survive_any_key() {
        assert_eq!(query("cni", "abc/eth0"), "kind=cni&key=abc%2Feth0");
        assert_eq!(query("cni", "a b&c=d"), "kind=cni&key=a%20b%26c%3Dd");
    }
}
