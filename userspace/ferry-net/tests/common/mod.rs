//! What the packet tests share: a datapath loaded in a pin directory of
//! its own, frame builders and readers, the test endpoints and addresses.
#![allow(dead_code, reason = "each test crate uses a part of it")]

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use ferry_common::{DropReason, Endpoint, PortKey, PortTarget, TCP_SYN};
use ferry_net::{
    datapath::{Datapath, MapSizes},
    preflight,
};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
/// BPF_PROG_TEST_RUN runs tc programs on an skb of the loopback device.
pub const TEST_RUN_IFINDEX: u32 = 1;

pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 2);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 3);
pub const A: Endpoint = Endpoint {
    ifindex: TEST_RUN_IFINDEX,
    net_id: 0,
    mac: [0x02, 0x42, 10, 66, 0, 2],
    host_mac: [0x02, 0xfe, 10, 66, 0, 2],
    stats: 0,
    flags: 0,
};
pub const B: Endpoint = Endpoint {
    ifindex: 77,
    net_id: 0,
    mac: [0x02, 0x42, 10, 66, 0, 3],
    host_mac: [0x02, 0xfe, 10, 66, 0, 3],
    stats: 0,
    flags: 0,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A loaded datapath in a pin directory of its own, removed on drop.
pub struct Loaded {
    pub datapath: Datapath,
    pub pin_dir: PathBuf,
}

impl Loaded {
    pub fn new() -> Self {
        Self::sized(MapSizes::default())
    }

    /// Loaded with maps of `sizes`.
    pub fn sized(sizes: MapSizes) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/fypkt{}x{n}", std::process::id()));
        preflight::ensure_bpffs(&pin_dir).expect("bpffs");
        // A program the verifier refuses fails every test: its pins go too.
        let mut datapath = Datapath::load_sized(&pin_dir, sizes).unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&pin_dir);
            panic!("load datapath: {e:?}")
        });
        datapath.add_endpoint(A_IP, A).expect("endpoint A");
        datapath.add_endpoint(B_IP, B).expect("endpoint B");
        Self { datapath, pin_dir }
    }

    pub fn run(&mut self, program: &'static str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.datapath.test_run(program, frame).expect("test run")
    }

    pub fn drops(&mut self, reason: DropReason) -> u64 {
        let all = self.datapath.drops().expect("drops");
        all.iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

pub fn eth(dst: [u8; 6], src: [u8; 6], proto: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&proto.to_be_bytes());
    f
}

/// Ethernet + IPv4 (with `options` bytes of IP options) + an ICMP echo.
pub fn ipv4_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    options: usize,
) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, 0x0800);
    let ihl = 5 + options / 4;
    let payload = [8u8, 0, 0xf7, 0xff, 0, 0, 0, 0]; // ICMP echo request, id 0 seq 0
    let total = (ihl * 4 + payload.len()) as u16;
    f.push(0x40 | ihl as u8);
    f.push(0);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 1, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend(std::iter::repeat_n(1u8, options)); // NOPs
    f.extend_from_slice(&payload);
    f
}

pub fn arp_frame(
    src_mac: [u8; 6],
    sha: [u8; 6],
    spa: Ipv4Addr,
    tpa: [u8; 4],
    oper: u16,
) -> Vec<u8> {
    let mut f = eth([0xff; 6], src_mac, 0x0806);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&oper.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f
}

// ---- published ports and their clients

pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
pub const CLIENT_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 1];
pub const UPLINK_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];

/// The Internet checksum (RFC 1071) of `data`.
pub fn inet_sum(data: &[u8], mut acc: u32) -> u16 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// TCP or UDP checksum over the pseudo-header and the segment.
pub fn l4_sum(frame: &[u8]) -> u16 {
    let ip = &frame[14..34];
    let seg = &frame[34..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    let acc: u32 = pseudo
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    inet_sum(seg, acc)
}

/// Ethernet + IPv4 + TCP SYN or UDP with valid checksums (UDP checksum 0
/// when `udp_no_csum`).
pub fn l4_frame(
    proto: u8,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    macs: ([u8; 6], [u8; 6]),
    udp_no_csum: bool,
) -> Vec<u8> {
    segment(proto, TCP_SYN, src, dst, macs, udp_no_csum)
}

/// Ethernet + IPv4 + a TCP segment with `flags`, valid checksums.
pub fn tcp_frame(
    flags: u8,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    macs: ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    segment(6, flags, src, dst, macs, false)
}

fn segment(
    proto: u8,
    tcp_flags: u8,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    macs: ([u8; 6], [u8; 6]),
    udp_no_csum: bool,
) -> Vec<u8> {
    let mut f = eth(macs.1, macs.0, 0x0800);
    let payload = b"ferry";
    let l4_len = if proto == 6 { 20 } else { 8 } + payload.len();
    let total = (20 + l4_len) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    let ip_sum = inet_sum(&f[14..34], 0);
    f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    if proto == 6 {
        f.extend_from_slice(&[
            0, 0, 0, 1, 0, 0, 0, 0, 0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0,
        ]);
    } else {
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend_from_slice(payload);
    if !(proto == 17 && udp_no_csum) {
        let at = if proto == 6 { 34 + 16 } else { 34 + 6 };
        let sum = l4_sum(&f);
        f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    f
}

pub fn assert_checksums_valid(frame: &[u8], what: &str) {
    assert_eq!(
        inet_sum(&frame[14..34], 0),
        0,
        "{what}: IPv4 header checksum"
    );
    assert_eq!(l4_sum(frame), 0, "{what}: L4 checksum");
}

pub fn ip_src(f: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(f[26], f[27], f[28], f[29])
}
pub fn ip_dst(f: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(f[30], f[31], f[32], f[33])
}
pub fn sport(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[34], f[35]])
}
pub fn dport(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[36], f[37]])
}

/// Publishes (any host address, `port`, `proto`) to A:`to`, with HOST_IP a
/// host address.
pub fn publish(dp: &mut Loaded, proto: u8, port: u16, to: u16) {
    dp.datapath.set_host_addrs(&[HOST_IP]).expect("host addrs");
    dp.datapath
        .add_port(
            PortKey {
                ip: [0; 4],
                port: port.to_be_bytes(),
                proto,
                pad: 0,
            },
            PortTarget {
                ip: A_IP.octets(),
                port: to.to_be_bytes(),
                pad: [0; 2],
            },
        )
        .expect("publish");
}

/// An ICMP "fragmentation needed" from `router` to `to`, quoting the first
/// 28 bytes of the IPv4 packet in `quoted` (a frame), with valid checksums.
pub fn frag_needed(router: Ipv4Addr, to: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
    let mut f = eth(UPLINK_MAC, CLIENT_MAC, 0x0800);
    let mut icmp = vec![3u8, 4, 0, 0, 0, 0, 0x05, 0x00]; // MTU 1280
    icmp.extend_from_slice(&quoted[14..14 + 28]);
    let sum = inet_sum(&icmp, 0);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    f.extend_from_slice(&router.octets());
    f.extend_from_slice(&to.octets());
    let ip_sum = inet_sum(&f[14..34], 0);
    f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    f.extend_from_slice(&icmp);
    f
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// A deterministic generator (xorshift64*): the same frames on every run,
/// so a failure names a case that can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Entries of `name` per `map_fill`.
pub fn entries(datapath: &Datapath, name: &str) -> usize {
    let fill = datapath.map_fill().expect("map fill");
    fill.iter().find(|m| m.name == name).expect("map").entries
}
