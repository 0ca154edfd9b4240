//! The embedded DNS server of user-defined networks, as Docker's: every
//! container on a user-defined network finds a resolver at 127.0.0.11:53
//! in its own namespace. ferryd opens that socket inside the container's
//! namespace (so no rule or route is needed, and internal networks have it
//! too) and serves it from its own runtime: names and aliases of the
//! network's containers are answered from the [`Table`]; other queries are
//! forwarded, from ferryd's namespace, to the upstream resolvers (the
//! container's `--dns`, else ferryd's `--dns-upstream`, else the host's
//! /etc/resolv.conf), except on internal networks, which get REFUSED.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsFd as _,
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{DNSClass, RData, Record, RecordType, rdata::A},
};
use tracing::{debug, warn};

/// Where containers find the resolver (in their own namespace).
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// TTL of answers about containers: short, since containers come and go.
const TTL: u32 = 600;

/// How long an upstream resolver gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The names of each network's containers, and the networks of each
/// container. The daemon adds a container's names on a network when it
/// joins it and removes them when it leaves.
#[derive(Clone, Default)]
pub struct Table(Arc<RwLock<Names>>);

#[derive(Default)]
struct Names {
    /// network -> (lowercase name, address).
    by_network: HashMap<String, Vec<(String, Ipv4Addr)>>,
    /// container ID -> (network, internal) it is attached to.
    of_container: HashMap<String, Vec<(String, bool)>>,
}

impl Table {
    /// Container `id` joined `network` (internal or not) as `names` at `ip`.
    pub fn add(&self, id: &str, network: &str, internal: bool, names: &[String], ip: Ipv4Addr) {
        if let Ok(mut t) = self.0.write() {
            let entries = t.by_network.entry(network.to_owned()).or_default();
            entries.extend(names.iter().map(|n| (n.to_ascii_lowercase(), ip)));
            t.of_container
                .entry(id.to_owned())
                .or_default()
                .push((network.to_owned(), internal));
        }
    }

    /// Container `id` left `network`, where it was `ip`.
    pub fn remove(&self, id: &str, network: &str, ip: Ipv4Addr) {
        if let Ok(mut t) = self.0.write() {
            if let Some(entries) = t.by_network.get_mut(network) {
                entries.retain(|(_, a)| *a != ip);
            }
            if let Some(nets) = t.of_container.get_mut(id) {
                nets.retain(|(n, _)| n != network);
                if nets.is_empty() {
                    t.of_container.remove(id);
                }
            }
        }
    }

    /// What `name` (lowercase, no trailing dot) is to container `id`: the
    /// addresses of that name on the container's networks, and whether it
    /// may ask upstream (it is on a network that is not internal).
    pub fn resolve(&self, id: &str, name: &str) -> (Vec<Ipv4Addr>, bool) {
        let Ok(t) = self.0.read() else {
            return (Vec::new(), false);
        };
        let nets = t
            .of_container
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut found: Vec<Ipv4Addr> = nets
            .iter()
            .filter_map(|(n, _)| t.by_network.get(n))
            .flatten()
            .filter(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .collect();
        found.dedup();
        (found, nets.iter().any(|(_, internal)| !internal))
    }
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send this reply.
    Reply(Vec<u8>),
    /// Not a name of the network: ask the upstream resolvers.
    Forward,
    /// Not even a DNS header: ignore it.
    Ignore,
}

/// Answers `query` for `container` (its ID): the names of its networks
/// from `table`; others forwarded if it is on a network that is not
/// internal, else REFUSED.
pub fn answer(query: &[u8], table: &Table, container: &str) -> Outcome {
    let Ok(msg) = Message::from_vec(query) else {
        return match query.get(..2) {
            Some(id) => reply_code(u16::from_be_bytes([id[0], id[1]]), ResponseCode::FormErr),
            None => Outcome::Ignore,
        };
    };
    let id = msg.metadata.id;
    if msg.metadata.message_type != MessageType::Query {
        return Outcome::Ignore;
    }
    if msg.metadata.op_code != OpCode::Query {
        return reply_code(id, ResponseCode::NotImp);
    }
    let [q] = msg.queries.as_slice() else {
        return reply_code(id, ResponseCode::FormErr);
    };
    let name = q.name().to_lowercase().to_ascii();
    let name = name.trim_end_matches('.');
    let (found, forward) = table.resolve(container, name);
    let found = if q.query_class() == DNSClass::IN {
        found
    } else {
        Vec::new()
    };
    let mut reply = Message::response(id, OpCode::Query);
    reply.metadata.recursion_desired = msg.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    if found.is_empty() {
        if forward {
            return Outcome::Forward;
        }
        reply.metadata.response_code = ResponseCode::Refused;
    } else {
        reply.metadata.authoritative = true;
        // Known name: A records; any other type has no data (NOERROR).
        if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
            for ip in found {
                reply.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
            }
        }
    }
    match reply.to_vec() {
        Ok(bytes) => Outcome::Reply(bytes),
        Err(_) => reply_code(id, ResponseCode::ServFail),
    }
}

fn reply_code(id: u16, code: ResponseCode) -> Outcome {
    match Message::error_msg(id, OpCode::Query, code).to_vec() {
        Ok(bytes) => Outcome::Reply(bytes),
        Err(_) => Outcome::Ignore,
    }
}

/// The resolver's sockets in one container's namespace.
pub struct Sockets {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
}

/// Binds 127.0.0.11:53, UDP and TCP, inside the network namespace `netns`
/// (from a short-lived thread, so no runtime thread ever changes
/// namespace).
pub fn bind_in(netns: std::fs::File) -> io::Result<Sockets> {
    std::thread::spawn(move || {
        let _in = crate::netns::NetNsGuard::enter(netns.as_fd()).map_err(io::Error::other)?;
        let udp = std::net::UdpSocket::bind((DNS_ADDR, 53))?;
        udp.set_nonblocking(true)?;
        let tcp = std::net::TcpListener::bind((DNS_ADDR, 53))?;
        tcp.set_nonblocking(true)?;
        Ok(Sockets { udp, tcp })
    })
    .join()
    .map_err(|_| io::Error::other("the DNS bind thread panicked"))?
}

/// Serves one container's resolver until the task is aborted.
pub async fn serve(sockets: Sockets, table: Table, id: String, upstreams: Vec<SocketAddr>) {
    let (udp, tcp) = match (
        tokio::net::UdpSocket::from_std(sockets.udp),
        tokio::net::TcpListener::from_std(sockets.tcp),
    ) {
        (Ok(u), Ok(t)) => (Arc::new(u), t),
        (Err(e), _) | (_, Err(e)) => {
            warn!(%e, "cannot serve a DNS socket");
            return;
        }
    };
    let upstreams = Arc::new(upstreams);
    tokio::join!(
        serve_udp(udp, &table, &id, &upstreams),
        serve_tcp(tcp, &table, &id, &upstreams)
    );
}

async fn serve_udp(
    socket: Arc<tokio::net::UdpSocket>,
    table: &Table,
    id: &str,
    upstreams: &Arc<Vec<SocketAddr>>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(%e, "DNS receive");
                continue;
            }
        };
        let query = buf[..len].to_vec();
        match answer(&query, table, id) {
            Outcome::Reply(bytes) => {
                let _ = socket.send_to(&bytes, peer).await;
            }
            Outcome::Ignore => {}
            Outcome::Forward => {
                let (socket, upstreams) = (Arc::clone(&socket), Arc::clone(upstreams));
                tokio::spawn(async move {
                    if let Some(reply) = forward(&query, &upstreams, false).await {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                });
            }
        }
    }
}

/// DNS over TCP (RFC 7766): length-prefixed messages, several per
/// connection; glibc comes here when an answer was truncated or with
/// `options use-vc`.
async fn serve_tcp(
    listener: tokio::net::TcpListener,
    table: &Table,
    id: &str,
    upstreams: &Arc<Vec<SocketAddr>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (table, id, upstreams) = (table.clone(), id.to_owned(), Arc::clone(upstreams));
        tokio::spawn(async move {
            let mut stream = stream;
            while let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_frame(&mut stream)).await
            {
                let reply = match answer(&query, &table, &id) {
                    Outcome::Reply(bytes) => bytes,
                    Outcome::Ignore => return,
                    Outcome::Forward => match forward(&query, &upstreams, true).await {
                        Some(reply) => reply,
                        None => return,
                    },
                };
                if write_frame(&mut stream, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// How long a TCP client may stay silent between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

async fn read_frame(stream: &mut tokio::net::TcpStream) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let len = stream.read_u16().await?;
    let mut msg = vec![0u8; usize::from(len)];
    stream.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_frame(stream: &mut tokio::net::TcpStream, msg: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let len = u16::try_from(msg.len()).map_err(io::Error::other)?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(msg).await
}

/// The upstream answer to `query`, or SERVFAIL. Over UDP first; a
/// truncated answer is asked again over TCP when the client came by TCP
/// (a UDP client retries over TCP itself).
async fn forward(query: &[u8], upstreams: &[SocketAddr], tcp_client: bool) -> Option<Vec<u8>> {
    let mut reply = ask_upstreams(query, upstreams).await;
    if tcp_client && reply.as_deref().is_some_and(truncated) {
        reply = ask_upstreams_tcp(query, upstreams).await.or(reply);
    }
    match reply {
        Some(reply) => Some(reply),
        None => match reply_code(query_id(query), ResponseCode::ServFail) {
            Outcome::Reply(bytes) => Some(bytes),
            _ => None,
        },
    }
}

/// The TC bit of a DNS message.
fn truncated(msg: &[u8]) -> bool {
    msg.get(2).is_some_and(|b| b & 0x02 != 0)
}

/// The first answer of the upstream resolvers over TCP, tried in order.
async fn ask_upstreams_tcp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(upstream).await?;
            write_frame(&mut stream, query).await?;
            read_frame(&mut stream).await
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            Ok(Ok(reply)) => return Some(reply),
            _ => debug!(%upstream, "no answer over TCP from the upstream resolver"),
        }
    }
    None
}

fn query_id(query: &[u8]) -> u16 {
    match query {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    }
}

/// The first answer of the upstream resolvers, tried in order.
async fn ask_upstreams(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let Ok(socket) = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
            continue;
        };
        if socket.connect(upstream).await.is_err() || socket.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf)).await {
            Ok(Ok(n)) if n >= 2 && buf[..2] == query[..2.min(query.len())] => {
                buf.truncate(n);
                return Some(buf);
            }
            _ => debug!(%upstream, "no answer from the upstream resolver"),
        }
    }
    None
}

/// The `nameserver` addresses of a resolv.conf, port 53.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse::<std::net::IpAddr>().ok())
                .flatten()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::Name;

    use super::*;

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut q = Message::query();
        q.metadata.id = 0x4242;
        q.metadata.recursion_desired = true;
        q.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).expect("name"),
            kind,
        ));
        q.to_vec().expect("encode")
    }

    fn reply(outcome: Outcome) -> Message {
        match outcome {
            Outcome::Reply(bytes) => Message::from_vec(&bytes).expect("decode"),
            other => panic!("not a reply: {other:?}"),
        }
    }

    #[test]
    fn names_of_the_network_are_answered_and_others_forwarded() {
        let table = Table::default();
        let ip = Ipv4Addr::new(10, 90, 0, 2);
        table.add("w", "blue", false, &["Web".into(), "www".into()], ip);
        table.add(
            "d",
            "green",
            false,
            &["db".into()],
            Ipv4Addr::new(10, 90, 1, 2),
        );
        table.add(
            "c",
            "blue",
            false,
            &["client".into()],
            Ipv4Addr::new(10, 90, 0, 3),
        );
        table.add(
            "v",
            "vault",
            true,
            &["v".into()],
            Ipv4Addr::new(10, 90, 2, 2),
        );
        let ask = |name: &str, kind, id: &str| answer(&query(name, kind), &table, id);

        let r = reply(ask("web.", RecordType::A, "c"));
        assert_eq!(r.metadata.id, 0x4242);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.recursion_desired && r.metadata.authoritative);
        let got: Vec<_> = r.answers.iter().map(|a| a.data.clone()).collect();
        assert_eq!(got, vec![RData::A(A(ip))]);
        let r = reply(ask("WWW", RecordType::AAAA, "c"));
        assert_eq!(
            (r.metadata.response_code, r.answers.len()),
            (ResponseCode::NoError, 0)
        );

        // Another network's names are not this network's.
        assert_eq!(ask("db", RecordType::A, "c"), Outcome::Forward);
        // Internal only: no upstream.
        let r = reply(ask("example.com", RecordType::A, "v"));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        // A second network adds its names, and here the way out.
        let second = Ipv4Addr::new(10, 90, 1, 9);
        table.add("v", "green", false, &["v".into()], second);
        assert_eq!(reply(ask("db", RecordType::A, "v")).answers.len(), 1);
        assert_eq!(ask("example.com", RecordType::A, "v"), Outcome::Forward);
        table.remove("v", "green", second);
        let r = reply(ask("db", RecordType::A, "v"));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);

        table.remove("w", "blue", ip);
        assert_eq!(ask("web", RecordType::A, "c"), Outcome::Forward);
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let table = Table::default();
        assert_eq!(answer(&[7], &table, "n"), Outcome::Ignore);
        let r = reply(answer(&[0x12, 0x34, 0xff], &table, "n"));
        assert_eq!(
            (r.metadata.id, r.metadata.response_code),
            (0x1234, ResponseCode::FormErr)
        );
    }

    #[test]
    fn the_truncation_bit_is_read() {
        let mut msg = query("web", RecordType::A);
        assert!(!truncated(&msg));
        msg[2] |= 0x02;
        assert!(truncated(&msg));
        assert!(!truncated(&[0, 1]));
    }

    #[test]
    fn nameservers_of_a_resolv_conf() {
        let conf = "search x\nnameserver 10.0.0.2\nnameserver  127.0.0.53\n# nameserver 1.1.1.1\nnameserver bad\n";
        let got: Vec<String> = nameservers(conf).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["10.0.0.2:53", "127.0.0.53:53"]);
    }
}
