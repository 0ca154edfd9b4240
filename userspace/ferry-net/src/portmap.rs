//! Published ports: Docker's `-p` syntax, and the host-side reservation
//! that keeps a published port away from host processes.
//!
//! Grammar (as `docker run -p`):
//! `[HOST_IP:][HOST_PORT[-HOST_END]:]CONTAINER_PORT[-CONTAINER_END][/tcp|/udp]`
//! - no host port: the kernel picks a free one;
//! - equal-length ranges map pairwise;
//! - a host range with a single container port takes the first free host
//!   port of the range.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number, as the datapath keys it.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid publish spec {spec:?}: {reason}")]
pub struct SpecError {
    pub spec: String,
    pub reason: String,
}

/// Host ports: one, a range, or none (the kernel picks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostPorts {
    Any,
    Range(u16, u16),
}

/// One `-p` argument, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishSpec {
    /// `None`: every address of the host.
    pub host_ip: Option<Ipv4Addr>,
    pub host_ports: HostPorts,
    pub container_ports: (u16, u16),
    pub proto: Proto,
}

/// One published port after allocation: what the datapath maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl fmt::Display for PortMapping {
    /// As `docker port` prints it: `80/tcp -> 0.0.0.0:8080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        write!(
            f,
            "{}/{} -> {ip}:{}",
            self.container_port, self.proto, self.host_port
        )
    }
}

/// The spec in the one spelling that parses back to it:
/// `[ip]:[hostPorts]:containerPorts/proto`.
impl fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |(lo, hi): (u16, u16)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        };
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}")?;
        }
        f.write_str(":")?;
        if let HostPorts::Range(lo, hi) = self.host_ports {
            f.write_str(&range((lo, hi)))?;
        }
        write!(f, ":{}/{}", range(self.container_ports), self.proto)
    }
}

fn parse_port(s: &str, what: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err(format!("{what} 0 is not a port")),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{what} {s:?} is not a number from 1 to 65535")),
    }
}

fn parse_range(s: &str, what: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (parse_port(lo, what)?, parse_port(hi, what)?),
        None => {
            let p = parse_port(s, what)?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(format!("{what} range {s} ends before it starts"));
    }
    Ok((lo, hi))
}

impl FromStr for PublishSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let fail = |reason: String| SpecError {
            spec: spec.to_owned(),
            reason,
        };
        let (rest, proto) = match spec.rsplit_once('/') {
            Some((rest, "tcp")) => (rest, Proto::Tcp),
            Some((rest, "udp")) => (rest, Proto::Udp),
            Some((_, other)) => return Err(fail(format!("protocol {other:?} is not tcp or udp"))),
            None => (spec, Proto::Tcp),
        };
        if rest.starts_with('[') {
            return Err(fail("IPv6 host addresses are not supported yet".into()));
        }
        let parts: Vec<&str> = rest.split(':').collect();
        let (ip, host, container) = match parts.as_slice() {
            [c] => (None, None, *c),
            [h, c] => (None, Some(*h), *c),
            [ip, h, c] => (Some(*ip), Some(*h), *c),
            _ => {
                return Err(fail(
                    "expected [ip:][hostPort:]containerPort[/proto]".into(),
                ));
            }
        };
        let host_ip = match ip {
            None | Some("") => None,
            Some(ip) => match ip.parse::<Ipv4Addr>() {
                Ok(a) if a.is_unspecified() => None,
                Ok(a) if a.is_multicast() || a.is_broadcast() => {
                    return Err(fail(format!("{a} is not a unicast address")));
                }
                Ok(a) => Some(a),
                Err(_) => return Err(fail(format!("{ip:?} is not an IPv4 address"))),
            },
        };
        let container_ports = parse_range(container, "container port").map_err(fail)?;
        let host_ports = match host {
            None | Some("") => HostPorts::Any,
            Some(h) => {
                let (lo, hi) = parse_range(h, "host port").map_err(fail)?;
                HostPorts::Range(lo, hi)
            }
        };
        let clen = container_ports.1 - container_ports.0;
        match host_ports {
            HostPorts::Range(lo, hi) if hi - lo != clen && clen != 0 => {
                return Err(fail(format!(
                    "host range {lo}-{hi} and container range {}-{} differ in length",
                    container_ports.0, container_ports.1
                )));
            }
            HostPorts::Any if clen != 0 => {
                return Err(fail(
                    "a container port range needs a host port range".into(),
                ));
            }
            _ => {}
        }
        Ok(Self {
            host_ip,
            host_ports,
            container_ports,
            proto,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReserveError {
    #[error("cannot publish {proto} port {port} on {ip}: it is already in use")]
    InUse {
        ip: Ipv4Addr,
        port: u16,
        proto: Proto,
    },
    #[error("cannot publish {proto} ports {lo}-{hi} on {ip}: every one is in use")]
    RangeInUse {
        ip: Ipv4Addr,
        lo: u16,
        hi: u16,
        proto: Proto,
    },
    #[error("cannot reserve a {proto} port on {ip}: {reason}")]
    Other {
        ip: Ipv4Addr,
        proto: Proto,
        reason: String,
    },
}

/// Who keeps host processes off a published host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// ferryd binds it (its own containers, Docker's: dockerd leaves a
    /// remote driver's ports to the driver).
    Socket,
    /// The container runtime does, as CNI's portmap contract has it:
    /// rootful podman listens on its containers' host ports itself after
    /// the plugin's ADD, and a socket of ferryd's there would make it fail
    /// with "address already in use". Conflicts with ferry's other
    /// endpoints are still refused.
    Runtime,
}

/// A host port held so no host process can bind it: by ferryd's socket
/// (bound, never listened on: a connection that somehow reaches the host
/// stack gets a reset instead of a wrong server), or by the runtime.
#[derive(Debug)]
pub enum Reservation {
    Tcp(TcpListener),
    Udp(UdpSocket),
    Runtime,
}

impl Reservation {
    fn bind(ip: Ipv4Addr, port: u16, proto: Proto) -> std::io::Result<(Self, u16)> {
        let addr = SocketAddrV4::new(ip, port);
        match proto {
            // std's TcpListener::bind also listens; bind a raw socket
            // instead so nothing is ever accepted here.
            Proto::Tcp => {
                let socket = nix::sys::socket::socket(
                    nix::sys::socket::AddressFamily::Inet,
                    nix::sys::socket::SockType::Stream,
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                nix::sys::socket::bind(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    &nix::sys::socket::SockaddrIn::from(addr),
                )?;
                let listener = TcpListener::from(socket);
                let port = listener.local_addr()?.port();
                Ok((Self::Tcp(listener), port))
            }
            Proto::Udp => {
                let socket = UdpSocket::bind(addr)?;
                let port = socket.local_addr()?.port();
                Ok((Self::Udp(socket), port))
            }
        }
    }
}

/// Turns a spec into mappings, reserving every host port on the way as
/// `hold` says; a port `taken` names (published by another endpoint) is
/// in use whoever holds it. On error nothing stays reserved (the
/// reservations made so far are dropped).
pub fn allocate(
    spec: &PublishSpec,
    hold: Hold,
    taken: &dyn Fn(Ipv4Addr, u16, Proto) -> bool,
) -> Result<Vec<(PortMapping, Reservation)>, ReserveError> {
    let ip = spec.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let proto = spec.proto;
    let (c_lo, c_hi) = spec.container_ports;
    let mapping = |host_port, container_port| PortMapping {
        host_ip: spec.host_ip,
        host_port,
        container_port,
        proto,
    };
    let in_use = |port| ReserveError::InUse { ip, port, proto };
    let other = |e: std::io::Error| ReserveError::Other {
        ip,
        proto,
        reason: e.to_string(),
    };
    let one = |port: u16| {
        if port != 0 && taken(ip, port, proto) {
            return Err(in_use(port));
        }
        // A runtime that holds its ports may hold them already (a restart
        // adopting them): only ferry's own endpoints are checked.
        if hold == Hold::Runtime && port != 0 {
            return Ok((Reservation::Runtime, port));
        }
        match Reservation::bind(ip, port, proto) {
            // A free port the kernel chose, left to the runtime.
            Ok((_, port)) if hold == Hold::Runtime => {
                if taken(ip, port, proto) {
                    return Err(in_use(port));
                }
                Ok((Reservation::Runtime, port))
            }
            Ok(r) => Ok(r),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(in_use(port)),
            Err(e) => Err(other(e)),
        }
    };
    match spec.host_ports {
        HostPorts::Any => {
            let (r, port) = one(0)?;
            Ok(vec![(mapping(port, c_lo), r)])
        }
        HostPorts::Range(lo, hi) if c_lo == c_hi && hi > lo => {
            for port in lo..=hi {
                match one(port) {
                    Ok((r, port)) => return Ok(vec![(mapping(port, c_lo), r)]),
                    Err(ReserveError::InUse { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(ReserveError::RangeInUse { ip, lo, hi, proto })
        }
        HostPorts::Range(lo, _) => (c_lo..=c_hi)
            .map(|c| {
                let host = lo + (c - c_lo);
                one(host).map(|(r, port)| (mapping(port, c), r))
            })
            .collect(),
    }
}

/// The masquerade port range as `ip_local_reserved_ports` writes it.
fn snat_range() -> String {
    format!(
        "{}-{}",
        ferry_common::SNAT_PORT_MIN,
        ferry_common::SNAT_PORT_MAX
    )
}

const RESERVED_PORTS: &str = "ipv4/ip_local_reserved_ports";

/// `list` (a comma-separated `ip_local_reserved_ports` value) with `range`
/// added or removed, other entries kept in order.
fn edit_port_list(list: &str, range: &str, present: bool) -> String {
    let mut items: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty() && *i != range)
        .collect();
    if present {
        items.push(range);
    }
    items.join(",")
}

/// Keeps the host's own sockets off the masquerade ports: the range is
/// outside Linux's default ephemeral range, and reserving it also covers a
/// host configured with a wider one. Current thread's network namespace.
pub fn reserve_snat_ports(reserved: bool) -> std::io::Result<()> {
    let path = format!("/proc/sys/net/{RESERVED_PORTS}");
    let current = std::fs::read_to_string(&path)?;
    crate::netns::write_net_sysctl(
        RESERVED_PORTS,
        &edit_port_list(current.trim(), &snat_range(), reserved),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_print_in_a_spelling_that_parses_back() {
        for spec in [
            "80",
            "8080:80",
            "127.0.0.1:8080:80/udp",
            "10.0.0.5::80",
            "8000-8010:9000-9010",
            "0.0.0.0:8000-8100:80",
        ] {
            let parsed: PublishSpec = spec.parse().expect(spec);
            let printed = parsed.to_string();
            assert_eq!(
                printed.parse::<PublishSpec>(),
                Ok(parsed),
                "{spec} -> {printed}"
            );
        }
        assert_eq!(
            "127.0.0.1:8080:80"
                .parse::<PublishSpec>()
                .map(|s| s.to_string()),
            Ok("127.0.0.1:8080:80/tcp".to_owned())
        );
    }

    #[test]
    fn reserved_port_list_edits_keep_other_entries() {
        let r = "61000-65535";
        assert_eq!(edit_port_list("", r, true), r);
        assert_eq!(
            edit_port_list("8080,9000-9010", r, true),
            "8080,9000-9010,61000-65535"
        );
        assert_eq!(
            edit_port_list("8080,61000-65535", r, true),
            "8080,61000-65535"
        );
        assert_eq!(
            edit_port_list("8080,61000-65535,9000", r, false),
            "8080,9000"
        );
        assert_eq!(edit_port_list(r, r, false), "");
    }

    fn spec(s: &str) -> PublishSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_docker_form() {
        let any = |c| (c, c);
        assert_eq!(
            spec("8080:80"),
            PublishSpec {
                host_ip: None,
                host_ports: HostPorts::Range(8080, 8080),
                container_ports: any(80),
                proto: Proto::Tcp
            }
        );
        assert_eq!(spec("80").host_ports, HostPorts::Any);
        let s = spec("127.0.0.1:8080:80");
        assert_eq!(
            (s.host_ip, s.host_ports),
            (Some(Ipv4Addr::LOCALHOST), HostPorts::Range(8080, 8080))
        );
        let s = spec("10.0.0.5::80");
        assert_eq!(
            (s.host_ip, s.host_ports),
            (Some(Ipv4Addr::new(10, 0, 0, 5)), HostPorts::Any)
        );
        let s = spec("8000-8010:9000-9010");
        assert_eq!(
            (s.host_ports, s.container_ports),
            (HostPorts::Range(8000, 8010), (9000, 9010))
        );
        assert_eq!(spec("53:53/udp").proto, Proto::Udp);
        assert_eq!(spec("53:53/tcp").proto, Proto::Tcp);
        assert_eq!(spec("0.0.0.0:80:80").host_ip, None);
        assert_eq!(
            spec("8000-8010:80").host_ports,
            HostPorts::Range(8000, 8010)
        );
    }

    #[test]
    fn rejects_bad_specs_naming_the_problem() {
        for (input, reason) in [
            ("", "container port"),
            ("80:", "container port"),
            ("abc", "not a number"),
            ("0:80", "not a port"),
            ("70000:80", "not a number"),
            ("8080:80/sctp", "protocol"),
            ("1.2.3:80:80", "IPv4"),
            ("[::1]:80:80", "IPv6"),
            ("8000-8002:9000-9010", "differ in length"),
            ("9000-9010", "needs a host port range"),
            ("8010-8000:80", "ends before"),
            ("1:2:3:4", "expected"),
            ("224.0.0.1:80:80", "unicast"),
        ] {
            let err = input.parse::<PublishSpec>().expect_err(input).to_string();
            assert!(err.contains(reason), "{input:?}: {err}");
            assert!(
                err.contains(&format!("{input:?}")),
                "{input:?}: does not name the spec: {err}"
            );
        }
    }

    /// No other endpoint publishes anything.
    fn free(_: Ipv4Addr, _: u16, _: Proto) -> bool {
        false
    }

    #[test]
    fn a_runtime_held_port_is_left_to_the_runtime_but_not_shared() {
        // A host process (standing for the runtime) listens on the port:
        // ferryd does not bind it, so that is no conflict.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let one = format!("127.0.0.1:{port}:80");
        let (m, r) = allocate(&spec(&one), Hold::Runtime, &free)
            .expect("runtime-held")
            .remove(0);
        assert_eq!(m.host_port, port);
        assert!(matches!(r, Reservation::Runtime));
        // Another endpoint's publish of it is one.
        let published = |_: Ipv4Addr, p: u16, proto: Proto| p == port && proto == Proto::Tcp;
        assert_eq!(
            allocate(&spec(&one), Hold::Runtime, &published).map(|v| v.len()),
            Err(ReserveError::InUse {
                ip: Ipv4Addr::LOCALHOST,
                port,
                proto: Proto::Tcp
            })
        );
        // Any port: a free one the kernel picks, not held by ferryd.
        let (m, r) = allocate(&spec("127.0.0.1::80"), Hold::Runtime, &free)
            .expect("any")
            .remove(0);
        assert!(matches!(r, Reservation::Runtime));
        std::net::TcpListener::bind(("127.0.0.1", m.host_port)).expect("left free");
    }

    #[test]
    fn allocation_reserves_and_reports_ports_in_use() {
        // A port the kernel picks is free; holding it makes it unavailable.
        let got = allocate(&spec("127.0.0.1::80"), Hold::Socket, &free).expect("any port");
        assert_eq!(got.len(), 1);
        let (m, _held) = &got[0];
        assert_ne!(m.host_port, 0);
        assert_eq!(
            m.to_string(),
            format!("80/tcp -> 127.0.0.1:{}", m.host_port)
        );
        let again = format!("127.0.0.1:{}:80", m.host_port);
        assert_eq!(
            allocate(&spec(&again), Hold::Socket, &free)
                .map(|v| v.len())
                .expect_err("taken"),
            ReserveError::InUse {
                ip: Ipv4Addr::LOCALHOST,
                port: m.host_port,
                proto: Proto::Tcp
            }
        );
        // The same port number is independent for UDP.
        let udp = format!("127.0.0.1:{}:80/udp", m.host_port);
        assert!(allocate(&spec(&udp), Hold::Socket, &free).is_ok());
    }

    #[test]
    fn a_host_range_for_one_port_skips_taken_ports() {
        let (first, held) = allocate(&spec("127.0.0.1::80"), Hold::Socket, &free)
            .expect("any")
            .remove(0);
        let p = first.host_port;
        if p == u16::MAX {
            return;
        }
        let range = format!("127.0.0.1:{}-{}:80", p, p + 1);
        let got = allocate(&spec(&range), Hold::Socket, &free);
        drop(held);
        match got {
            Ok(v) => assert_eq!(v[0].0.host_port, p + 1),
            // p + 1 may be taken by someone else on a busy machine.
            Err(e) => assert!(matches!(e, ReserveError::RangeInUse { .. }), "{e}"),
        }
    }

    #[test]
    fn pairwise_ranges_roll_back_on_conflict() {
        let (taken, _held) = allocate(&spec("127.0.0.1::80"), Hold::Socket, &free)
            .expect("any")
            .remove(0);
        let p = taken.host_port;
        if p < 2 {
            return;
        }
        // p-1 is reserved by the range then released when p fails.
        let range = format!("127.0.0.1:{}-{}:9000-9001", p - 1, p);
        assert!(allocate(&spec(&range), Hold::Socket, &free).is_err());
        let single = format!("127.0.0.1:{}:80", p - 1);
        assert!(
            allocate(&spec(&single), Hold::Socket, &free).is_ok(),
            "port {} stayed reserved",
            p - 1
        );
    }
}
