//! What an endpoint is called and recorded as: its interface names
//! (`Link`), the shape of host-side veth names, the MACs derived from its
//! address, and the record an attach returns (`NetworkRecord`).

use std::net::Ipv4Addr;

use ferry_common::PortKey;
use serde::{Deserialize, Serialize};

use crate::{link::Mac, network::DEFAULT_NETWORK, portmap::PortMapping};
/// Host-side veths are this prefix and 12 characters of the endpoint's id.
pub const HOST_VETH_PREFIX: &str = "fy";

/// One interface of a namespace on a network, as made by [`Agent::attach`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    /// Cookie of the namespace (socket hooks).
    #[serde(default)]
    pub netns_cookie: u64,
    /// The network's name.
    #[serde(default = "default_network")]
    pub network: String,
    /// Other names of the endpoint on that network.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The interface inside the namespace.
    #[serde(default = "first_ifname")]
    pub ifname: String,
    /// The address belongs to the engine's IPAM (Docker's): the endpoint
    /// going does not free it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external_ipam: bool,
    /// The interface is a macvlan slave of the uplink `host_ifname`
    /// (`host_ifindex`, `host_mac`), not a veth: the host side has a route
    /// and a neighbour entry for it there, and nothing of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub macvlan: bool,
}

fn first_ifname() -> String {
    "eth0".to_owned()
}

fn default_network() -> String {
    DEFAULT_NETWORK.to_owned()
}

/// An endpoint's interface names: inside its namespace and on the host,
/// and whether it is the namespace's first (default route, socket hooks).
pub struct Link {
    pub ifname: String,
    pub host_ifname: String,
    pub first: bool,
}

impl Link {
    /// `ifname` (eth0 for ferry's containers) and `fy<12 hex of the id>`.
    pub fn first(id: &str, ifname: &str) -> Self {
        Self {
            ifname: ifname.to_owned(),
            host_ifname: format!("{HOST_VETH_PREFIX}{}", &id[..12]),
            first: true,
        }
    }

    /// The next free `ethN` and `fy<11 hex of the id><g..z>` (never a hex
    /// digit, so never the first link's name) of a namespace that has
    /// `taken` attachments.
    pub fn next(id: &str, taken: &[&NetworkRecord]) -> Option<Self> {
        let ifname = (1..)
            .map(|n| format!("eth{n}"))
            .find(|n| taken.iter().all(|t| &t.ifname != n))?;
        let host_ifname = ('g'..='z')
            .map(|c| format!("{HOST_VETH_PREFIX}{}{c}", &id[..11]))
            .find(|n| taken.iter().all(|t| &t.host_ifname != n))?;
        Some(Self {
            ifname,
            host_ifname,
            first: false,
        })
    }
}

/// Whether `name` is one of ferry's host-side veths (by its shape: the
/// prefix, 11 hex digits of an id, and a hex digit or a letter g-z).
pub fn is_host_veth(name: &str) -> bool {
    name.strip_prefix(HOST_VETH_PREFIX).is_some_and(|rest| {
        rest.len() == 12
            && rest[..11].bytes().all(|b| b.is_ascii_hexdigit())
            && rest[11..]
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    })
}

/// Locally administered MACs derived from the address, readable in `ip
/// neigh` and tcpdump: 02:42:<ip> in the namespace (as Docker), 02:fe:<ip>
/// for its gateway on the host side.
pub fn macs_for(ip: Ipv4Addr) -> (Mac, Mac) {
    let [a, b, c, d] = ip.octets();
    ([0x02, 0x42, a, b, c, d], [0x02, 0xfe, a, b, c, d])
}

/// The datapath key of a published port.
pub fn port_key(mapping: &PortMapping) -> PortKey {
    PortKey {
        ip: mapping.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
        port: mapping.host_port.to_be_bytes(),
        proto: mapping.proto.number(),
        pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veths_are_known_by_their_shape() {
        assert!(is_host_veth("fyd763e2d11f6b"));
        for other in [
            "fy",
            "fyd763e2d11f6",
            "fyd763e2d11f6bb",
            "fyxyz3e2d11f6b",
            "eth0",
            "uplink0",
        ] {
            assert!(!is_host_veth(other), "{other}");
        }
    }

    #[test]
    fn links_get_distinct_interface_and_veth_names() {
        let id = "d763e2d11f6b0123";
        let first = Link::first(id, "eth0");
        assert_eq!(
            (first.ifname.as_str(), first.host_ifname.as_str()),
            ("eth0", "fyd763e2d11f6b")
        );
        let mut taken = vec![NetworkRecord {
            ip: Ipv4Addr::new(10, 90, 0, 2),
            mac: [0; 6],
            host_ifname: first.host_ifname.clone(),
            host_ifindex: 1,
            host_mac: [0; 6],
            netns_cookie: 1,
            network: "a".into(),
            aliases: vec![],
            ifname: first.ifname.clone(),
            external_ipam: false,
            macvlan: false,
        }];
        let second = Link::next(id, &taken.iter().collect::<Vec<_>>()).expect("second");
        assert_eq!(
            (second.ifname.as_str(), second.host_ifname.as_str()),
            ("eth1", "fyd763e2d11f6g")
        );
        assert!(is_host_veth(&second.host_ifname) && !second.first);
        taken.push(NetworkRecord {
            host_ifname: second.host_ifname,
            ifname: second.ifname,
            ..taken[0].clone()
        });
        let third = Link::next(id, &taken.iter().collect::<Vec<_>>()).expect("third");
        assert_eq!(
            (third.ifname.as_str(), third.host_ifname.as_str()),
            ("eth2", "fyd763e2d11f6h")
        );
    }
}
