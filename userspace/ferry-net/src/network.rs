//! Networks: the default `bridge` network (ferryd's `--subnet`, `net_id`
//! 0) and user-defined ones, each with a subnet, its own addresses and a
//! datapath policy (internal, icc). User-defined networks are kept in
//! `<state>/networks.json`.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ferry_common::{NET_INTERNAL, NET_NO_ICC};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::ipam::{Ipam, IpamError};

/// The default network's name, as in Docker.
pub const DEFAULT_NETWORK: &str = "bridge";

/// Names that are network modes, never user-defined networks.
const RESERVED: [&str; 4] = ["bridge", "default", "host", "none"];

/// Where networks created without `--subnet` get their /24 from.
const POOL: &str = "10.90.0.0/15";

/// Docker's driver option for container-to-container traffic.
pub const OPT_ICC: &str = "com.docker.network.bridge.enable_icc";
/// Docker's macvlan driver option: the uplink its containers' interfaces
/// are slaves of.
pub const OPT_PARENT: &str = "parent";
/// Docker's macvlan driver option: the mode, of which ferry has one.
pub const OPT_MACVLAN_MODE: &str = "macvlan_mode";

/// How a network's containers are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// A veth per container (the default; Docker's `bridge`).
    #[default]
    Bridge,
    /// A macvlan slave of an uplink per container, NAT'ed like the veths:
    /// no veth crossing, and the wire sees the host's MAC only.
    Macvlan,
}

impl Driver {
    /// By Docker's name for it; ferry's own name (`ferry`, what Docker's
    /// plugin and ferry report) is the bridge driver.
    pub fn parse(name: &str) -> Result<Self, NetworkError> {
        match name {
            "" | "bridge" | "ferry" => Ok(Self::Bridge),
            "macvlan" => Ok(Self::Macvlan),
            other => Err(NetworkError::Driver(other.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid subnet {value:?}: {reason}")]
pub struct SubnetError {
    value: String,
    reason: String,
}

/// Parses and checks a container subnet: IPv4 CIDR, network address given
/// exactly, room for at least one container besides the reserved addresses.
pub fn parse_subnet(value: &str) -> Result<Ipv4Net, SubnetError> {
    let err = |reason: &str| SubnetError {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let net: Ipv4Net = value
        .parse()
        .map_err(|_| err("expected an IPv4 CIDR such as 10.88.0.0/16"))?;
    if net.network() != net.addr() {
        return Err(err(&format!(
            "host bits are set; did you mean {}?",
            net.trunc()
        )));
    }
    if net.prefix_len() > 30 {
        return Err(err(
            "prefix longer than /30 leaves no address for containers",
        ));
    }
    if net.contains(&Ipv4Addr::new(169, 254, 1, 1)) || net.addr().is_loopback() {
        return Err(err("overlaps loopback or the 169.254.1.1 gateway"));
    }
    if net.addr().is_multicast() || net.addr().is_broadcast() {
        return Err(err("not a unicast range"));
    }
    Ok(net)
}

/// Whether `name` can name a network (or a container): Docker's rule.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network {0} not found")]
    NotFound(String),
    #[error("network with name {0} already exists")]
    Exists(String),
    #[error("{0:?} is a predefined network (mode); pick another name")]
    Reserved(String),
    #[error("invalid network name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    Name(String),
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    #[error("subnet {subnet} overlaps {other} of network {name}")]
    Overlap {
        subnet: Ipv4Net,
        other: Ipv4Net,
        name: String,
    },
    #[error("subnet {subnet} holds the host address {addr}")]
    HostAddress { subnet: Ipv4Net, addr: Ipv4Addr },
    #[error("no free /24 left in {POOL} for a new network: give --subnet")]
    PoolExhausted,
    #[error(
        "unsupported network option {0:?} (ferry knows {OPT_ICC}=true|false, and for macvlan \
         {OPT_PARENT}=IFACE and {OPT_MACVLAN_MODE}=private)"
    )]
    Option(String),
    #[error("unknown network driver {0:?} (ferry has bridge and macvlan)")]
    Driver(String),
    #[error("a macvlan network needs -o {OPT_PARENT}=IFACE, the uplink its containers sit on")]
    NoParent,
    #[error(
        "macvlan_mode {0:?} is not supported: ferry's macvlan networks run in private mode, so \
         that every packet of their containers passes its datapath"
    )]
    MacvlanMode(String),
    #[error("{what} is supported on user-defined networks only")]
    DefaultOnly { what: &'static str },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("cannot save the networks to {path}: {reason}")]
    Save { path: PathBuf, reason: String },
    #[error("cannot read the networks from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

/// One network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkDef {
    pub name: String,
    pub id: String,
    /// The datapath's number for it (`Endpoint::net_id`); 0 is the default.
    pub net_id: u32,
    pub subnet: Ipv4Net,
    /// Reaches nothing outside itself: no masquerade, no published ports.
    pub internal: bool,
    /// Its containers may talk to each other (Docker's icc).
    pub icc: bool,
    /// Unix seconds.
    pub created: u64,
    #[serde(default)]
    pub driver: Driver,
    /// macvlan: the uplink its containers' interfaces are slaves of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl NetworkDef {
    pub fn is_default(&self) -> bool {
        self.net_id == 0
    }

    /// The datapath's policy bits for it.
    pub fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.internal {
            flags |= NET_INTERNAL;
        }
        if !self.icc {
            flags |= NET_NO_ICC;
        }
        flags
    }
}

/// What `ferry network create` asks for.
#[derive(Debug, Clone)]
pub struct CreateSpec<'a> {
    pub name: &'a str,
    /// Empty: a free /24 from the pool.
    pub subnet: &'a str,
    pub internal: bool,
    /// Docker's driver name: empty, `bridge`, `ferry` or `macvlan`.
    pub driver: &'a str,
    pub options: &'a BTreeMap<String, String>,
}

/// Every network and its addresses.
pub struct Networks {
    defs: BTreeMap<String, NetworkDef>,
    ipams: HashMap<String, Ipam>,
    path: PathBuf,
}

impl Networks {
    /// The default network on `default_subnet`, and the user-defined ones
    /// saved in `state_dir`.
    pub fn load(state_dir: &Path, default_subnet: Ipv4Net) -> Result<Self, NetworkError> {
        let path = state_dir.join("networks.json");
        let saved: Vec<NetworkDef> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| NetworkError::Load {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(NetworkError::Load {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let default = NetworkDef {
            name: DEFAULT_NETWORK.to_owned(),
            id: format!("{:064x}", 0),
            net_id: 0,
            subnet: default_subnet,
            internal: false,
            icc: true,
            created: 0,
            driver: Driver::Bridge,
            parent: None,
        };
        let mut networks = Self {
            defs: BTreeMap::new(),
            ipams: HashMap::new(),
            path,
        };
        for def in std::iter::once(default).chain(saved) {
            networks
                .ipams
                .insert(def.name.clone(), Ipam::new(def.subnet));
            networks.defs.insert(def.name.clone(), def);
        }
        Ok(networks)
    }

    fn save(&self) -> Result<(), NetworkError> {
        let user: Vec<&NetworkDef> = self.defs.values().filter(|d| !d.is_default()).collect();
        let fail = |reason: String| NetworkError::Save {
            path: self.path.clone(),
            reason,
        };
        let json = serde_json::to_vec_pretty(&user).map_err(|e| fail(e.to_string()))?;
        crate::files::write_atomically(&self.path, &json).map_err(|e| fail(e.to_string()))
    }

    /// Creates a network; `host_addrs` may not fall in its subnet.
    pub fn create(
        &mut self,
        spec: &CreateSpec<'_>,
        id: String,
        now: u64,
        host_addrs: &[Ipv4Addr],
    ) -> Result<NetworkDef, NetworkError> {
        let name = spec.name;
        if RESERVED.contains(&name) {
            return Err(NetworkError::Reserved(name.to_owned()));
        }
        if !valid_name(name) {
            return Err(NetworkError::Name(name.to_owned()));
        }
        if self.defs.contains_key(name) {
            return Err(NetworkError::Exists(name.to_owned()));
        }
        let driver = Driver::parse(spec.driver)?;
        let mut icc = true;
        let mut parent = None;
        for (key, value) in spec.options {
            match (key.as_str(), value.as_str(), driver) {
                (OPT_ICC, "true", _) => icc = true,
                (OPT_ICC, "false", _) => icc = false,
                (OPT_PARENT, iface, Driver::Macvlan) if !iface.is_empty() => {
                    parent = Some(iface.to_owned());
                }
                (OPT_MACVLAN_MODE, "private", Driver::Macvlan) => {}
                (OPT_MACVLAN_MODE, mode, Driver::Macvlan) => {
                    return Err(NetworkError::MacvlanMode(mode.to_owned()));
                }
                _ => return Err(NetworkError::Option(format!("{key}={value}"))),
            }
        }
        if driver == Driver::Macvlan && parent.is_none() {
            return Err(NetworkError::NoParent);
        }
        let subnet = match spec.subnet {
            "" => self.free_subnet()?,
            s => {
                let subnet = parse_subnet(s)?;
                if let Some(other) = self.overlapping(subnet) {
                    return Err(NetworkError::Overlap {
                        subnet,
                        other: other.subnet,
                        name: other.name.clone(),
                    });
                }
                subnet
            }
        };
        if let Some(addr) = host_addrs.iter().find(|a| subnet.contains(*a)) {
            return Err(NetworkError::HostAddress {
                subnet,
                addr: *addr,
            });
        }
        let net_id = (1..)
            .find(|n| self.defs.values().all(|d| d.net_id != *n))
            .unwrap_or(u32::MAX);
        let def = NetworkDef {
            name: name.to_owned(),
            id,
            net_id,
            subnet,
            internal: spec.internal,
            icc,
            created: now,
            driver,
            parent,
        };
        self.defs.insert(def.name.clone(), def.clone());
        self.ipams.insert(def.name.clone(), Ipam::new(subnet));
        if let Err(e) = self.save() {
            self.defs.remove(name);
            self.ipams.remove(name);
            return Err(e);
        }
        Ok(def)
    }

    fn overlapping(&self, subnet: Ipv4Net) -> Option<&NetworkDef> {
        self.defs
            .values()
            .find(|d| d.subnet.contains(&subnet.network()) || subnet.contains(&d.subnet.network()))
    }

    /// A /24 of the pool that no network overlaps.
    pub fn free_subnet(&self) -> Result<Ipv4Net, NetworkError> {
        let pool: Ipv4Net = POOL.parse().map_err(|_| NetworkError::PoolExhausted)?;
        let free = pool
            .subnets(24)
            .map_err(|_| NetworkError::PoolExhausted)?
            .find(|s| self.overlapping(*s).is_none());
        free.ok_or(NetworkError::PoolExhausted)
    }

    /// Removes a user-defined network (the caller checked it is unused).
    pub fn remove(&mut self, name: &str) -> Result<NetworkDef, NetworkError> {
        let def = self.find(name)?.clone();
        if def.is_default() {
            return Err(NetworkError::Reserved(def.name));
        }
        self.defs.remove(&def.name);
        let ipam = self.ipams.remove(&def.name);
        if let Err(e) = self.save() {
            self.defs.insert(def.name.clone(), def.clone());
            if let Some(ipam) = ipam {
                self.ipams.insert(def.name.clone(), ipam);
            }
            return Err(e);
        }
        Ok(def)
    }

    /// A network by name, full ID or unique ID prefix.
    pub fn find(&self, reference: &str) -> Result<&NetworkDef, NetworkError> {
        if let Some(def) = self.defs.get(reference) {
            return Ok(def);
        }
        let mut by_id = self
            .defs
            .values()
            .filter(|d| !reference.is_empty() && d.id.starts_with(reference));
        match (by_id.next(), by_id.next()) {
            (Some(def), None) => Ok(def),
            _ => Err(NetworkError::NotFound(reference.to_owned())),
        }
    }

    /// The network on exactly `subnet`.
    pub fn by_subnet(&self, subnet: Ipv4Net) -> Option<&NetworkDef> {
        self.defs.values().find(|d| d.subnet == subnet)
    }

    pub fn list(&self) -> impl Iterator<Item = &NetworkDef> {
        self.defs.values()
    }

    /// An address on `network`: `requested` if given (user-defined networks
    /// only), else the next free one.
    pub fn allocate(
        &mut self,
        network: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, NetworkError> {
        let def = self.find(network)?.clone();
        let ipam = self
            .ipams
            .get_mut(&def.name)
            .ok_or_else(|| NetworkError::NotFound(def.name.clone()))?;
        match requested {
            Some(_) if def.is_default() => Err(NetworkError::DefaultOnly {
                what: "a user-specified IP address",
            }),
            Some(addr) => ipam.reserve(addr).map(|()| addr).map_err(Into::into),
            None => ipam.allocate().map_err(Into::into),
        }
    }

    /// Marks an address taken on `network` (adoption).
    pub fn reserve(&mut self, network: &str, addr: Ipv4Addr) -> Result<(), NetworkError> {
        let name = self.find(network)?.name.clone();
        match self.ipams.get_mut(&name) {
            Some(ipam) => ipam.reserve(addr).map_err(Into::into),
            None => Err(NetworkError::NotFound(name)),
        }
    }

    /// Frees an address, on whichever network holds it.
    pub fn release(&mut self, addr: Ipv4Addr) {
        for ipam in self.ipams.values_mut() {
            if ipam.subnet().contains(&addr) {
                ipam.release(addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_accepts_plain_cidrs() {
        let net = parse_subnet("10.88.0.0/16").expect("valid");
        assert_eq!(net.prefix_len(), 16);
        assert!(parse_subnet("192.168.7.0/30").is_ok());
    }

    #[test]
    fn subnet_rejects_bad_input_with_a_reason() {
        for (input, reason) in [
            ("10.88.0.0/33", "CIDR"),
            ("banana", "CIDR"),
            ("10.88.0.1/16", "host bits"),
            ("10.0.0.0/31", "/30"),
            ("169.254.0.0/16", "gateway"),
            ("127.0.0.0/8", "loopback"),
            ("224.0.0.0/8", "unicast"),
            ("fd00::/64", "CIDR"),
        ] {
            let err = parse_subnet(input).expect_err(input).to_string();
            assert!(err.contains(reason), "{input}: {err}");
            assert!(
                err.contains(input),
                "{input}: error does not name the input: {err}"
            );
        }
    }

    fn networks(dir: &Path) -> Networks {
        Networks::load(dir, "10.88.0.0/16".parse().expect("subnet")).expect("load")
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-net-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn spec<'a>(
        name: &'a str,
        subnet: &'a str,
        opts: &'a BTreeMap<String, String>,
    ) -> CreateSpec<'a> {
        CreateSpec {
            name,
            subnet,
            internal: false,
            driver: "",
            options: opts,
        }
    }

    #[test]
    fn networks_are_created_checked_saved_and_removed() {
        let d = dir("crud");
        let none = BTreeMap::new();
        let mut nets = networks(&d);
        let front = nets
            .create(
                &spec("front", "10.91.5.0/24", &none),
                "a".repeat(64),
                1,
                &[],
            )
            .expect("front");
        assert_eq!(front.net_id, 1);
        let auto = nets
            .create(&spec("back", "", &none), "b".repeat(64), 2, &[])
            .expect("back");
        assert_eq!(auto.subnet.to_string(), "10.90.0.0/24");
        assert_eq!(auto.net_id, 2);
        for (name, subnet, says) in [
            ("front", "10.92.0.0/24", "already exists"),
            ("host", "", "predefined"),
            (
                "x",
                "10.91.5.128/25",
                "overlaps 10.91.5.0/24 of network front",
            ),
            ("x", "10.88.1.0/24", "of network bridge"),
            ("x", "10.91.6.0/33", "invalid subnet"),
            ("-x", "", "invalid network name"),
        ] {
            let err = nets
                .create(&spec(name, subnet, &none), "c".repeat(64), 3, &[])
                .expect_err(name)
                .to_string();
            assert!(err.contains(says), "{name} {subnet}: {err}");
        }
        let err = nets
            .create(
                &spec("y", "10.93.0.0/24", &none),
                "d".repeat(64),
                3,
                &["10.93.0.7".parse().expect("ip")],
            )
            .expect_err("host address")
            .to_string();
        assert!(err.contains("holds the host address 10.93.0.7"), "{err}");
        let opts = BTreeMap::from([(OPT_ICC.to_owned(), "false".to_owned())]);
        let quiet = nets
            .create(&spec("quiet", "", &opts), "e".repeat(64), 4, &[])
            .expect("quiet");
        assert_eq!(quiet.flags(), NET_NO_ICC);
        assert_eq!(quiet.subnet.to_string(), "10.90.1.0/24");

        // Saved: a new registry sees the same networks.
        let again = networks(&d);
        let names: Vec<&str> = again.list().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["back", "bridge", "front", "quiet"]);
        assert_eq!(
            again.find("aaaa").map(|n| n.name.as_str()).ok(),
            Some("front")
        );

        nets.remove("front").expect("remove");
        assert!(nets.remove("bridge").is_err());
        assert!(matches!(nets.find("front"), Err(NetworkError::NotFound(_))));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn addresses_come_from_each_network_and_static_ones_are_checked() {
        let d = dir("ipam");
        let none = BTreeMap::new();
        let mut nets = networks(&d);
        nets.create(
            &spec("front", "10.91.5.0/24", &none),
            "a".repeat(64),
            1,
            &[],
        )
        .expect("front");
        assert_eq!(
            nets.allocate("front", None).expect("auto"),
            Ipv4Addr::new(10, 91, 5, 2)
        );
        let fixed = Ipv4Addr::new(10, 91, 5, 77);
        assert_eq!(nets.allocate("front", Some(fixed)).expect("static"), fixed);
        assert!(nets.allocate("front", Some(fixed)).is_err(), "taken twice");
        assert!(
            nets.allocate("front", Some(Ipv4Addr::new(10, 91, 6, 1)))
                .expect_err("outside")
                .to_string()
                .contains("outside 10.91.5.0/24")
        );
        assert!(
            nets.allocate("bridge", Some(Ipv4Addr::new(10, 88, 0, 9)))
                .expect_err("default")
                .to_string()
                .contains("user-defined networks only")
        );
        nets.release(fixed);
        assert_eq!(nets.allocate("front", Some(fixed)).expect("again"), fixed);
        let _ = std::fs::remove_dir_all(&d);
    }
}
