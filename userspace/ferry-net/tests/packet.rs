//! Packet tests of the kernel programs with BPF_PROG_TEST_RUN: crafted
//! frames in, verdict, rewritten frame and counters out. Needs root (the
//! programs are loaded for real), no namespace or interface.
//!
//! One case per `<hook>_<feature>_<scenario>`, each saying what it expects.

mod common;

use std::net::Ipv4Addr;

use common::*;
use ferry_common::{
    DropReason, Endpoint, GATEWAY_V4, NET_INTERNAL, NET_NO_ICC, SNAT_PORT_MAX, SNAT_PORT_MIN,
};
use ferry_net::datapath::{
    Datapath, PROG_FROM_CONTAINER, PROG_LOCAL_INGRESS, PROG_TO_CONTAINER, PROG_UPLINK_INGRESS,
    PROG_XDP_PREFILTER,
};

/// Expects: REDIRECT (peer), MACs rewritten to B's and B's gateway's, the
/// IP packet untouched, A's tx and B's rx counted once.
#[test]
fn from_container_forward_to_local_peer() {
    let mut dp = Loaded::new();
    let frame = ipv4_frame(A.mac, A.host_mac, A_IP, B_IP, 0);
    let (verdict, out) = dp.run(PROG_FROM_CONTAINER, &frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &B.mac, "destination MAC");
    assert_eq!(&out[6..12], &B.host_mac, "source MAC");
    assert_eq!(&out[12..], &frame[12..], "the IP packet must not change");
    let a = dp.datapath.endpoint_stats(A_IP).expect("stats");
    let b = dp.datapath.endpoint_stats(B_IP).expect("stats");
    assert_eq!((a.tx_packets, a.tx_bytes), (1, frame.len() as u64));
    assert_eq!((b.rx_packets, b.rx_bytes), (1, frame.len() as u64));
}

/// Expects: an endpoint added again (adoption) keeps its counters; one
/// removed frees its slot, and the next new endpoint gets that slot zeroed
/// while the others keep counting.
#[test]
fn endpoint_counter_slots_are_kept_freed_and_zeroed() {
    let mut dp = Loaded::new();
    let frame = ipv4_frame(A.mac, A.host_mac, A_IP, B_IP, 0);
    dp.run(PROG_FROM_CONTAINER, &frame);
    dp.datapath.add_endpoint(A_IP, A).expect("adopt A");
    let tx = |dp: &mut Loaded, ip| dp.datapath.endpoint_stats(ip).expect("stats").tx_packets;
    assert_eq!(tx(&mut dp, A_IP), 1, "adoption keeps the count");

    dp.datapath.remove_endpoint(A_IP).expect("remove A");
    assert_eq!(tx(&mut dp, A_IP), 0, "a removed endpoint has no counters");
    let c_ip = Ipv4Addr::new(10, 66, 0, 4);
    dp.datapath.add_endpoint(c_ip, A).expect("endpoint C");
    let pinned = aya::maps::MapData::from_pin(dp.pin_dir.join("endpoints")).expect("pin");
    let endpoints: aya::maps::HashMap<_, ferry_common::Ipv4Key, Endpoint> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(pinned)).expect("endpoints");
    let slot = |ip: Ipv4Addr| {
        let key = ferry_common::Ipv4Key { ip: ip.octets() };
        endpoints.get(&key, 0).expect("endpoint").stats
    };
    assert_eq!((slot(c_ip), slot(B_IP)), (0, 1), "C has A's old slot");
    assert_eq!(tx(&mut dp, c_ip), 0, "a reused slot starts at zero");
    let c_frame = ipv4_frame(A.mac, A.host_mac, c_ip, B_IP, 0);
    assert_eq!(dp.run(PROG_FROM_CONTAINER, &c_frame).0, TC_ACT_REDIRECT);
    assert_eq!(tx(&mut dp, c_ip), 1);
    let b = dp.datapath.endpoint_stats(B_IP).expect("stats");
    assert_eq!(b.rx_packets, 2, "B counted both, through its own slot");
}

/// Expects: IP options do not confuse the parser; still REDIRECT.
#[test]
fn from_container_forward_with_ip_options() {
    let mut dp = Loaded::new();
    let (verdict, _) = dp.run(
        PROG_FROM_CONTAINER,
        &ipv4_frame(A.mac, A.host_mac, A_IP, B_IP, 8),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
}

/// Expects: OK to the host stack for one of the host's addresses, frame
/// unchanged, A's tx counted.
#[test]
fn from_container_pass_to_host() {
    let mut dp = Loaded::new();
    let host = Ipv4Addr::new(192, 0, 2, 1);
    dp.datapath.set_host_addrs(&[host]).expect("host addrs");
    let frame = ipv4_frame(A.mac, A.host_mac, A_IP, host, 0);
    let (verdict, out) = dp.run(PROG_FROM_CONTAINER, &frame);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, frame);
    assert_eq!(
        dp.datapath.endpoint_stats(A_IP).expect("stats").tx_packets,
        1
    );
}

/// Expects: SHOT and `spoofed_ip` +1 for a source that is no endpoint, and
/// for an endpoint's address sent from another endpoint's veth (B lives on
/// ifindex 77, the test run is on 1).
#[test]
fn from_container_antispoof_foreign_ip() {
    let mut dp = Loaded::new();
    for src in [Ipv4Addr::new(10, 66, 0, 99), B_IP] {
        let before = dp.drops(DropReason::SpoofedIp);
        let mac = if src == B_IP { B.mac } else { A.mac };
        let (verdict, _) = dp.run(
            PROG_FROM_CONTAINER,
            &ipv4_frame(mac, A.host_mac, src, A_IP, 0),
        );
        assert_eq!(verdict, TC_ACT_SHOT, "from {src}");
        assert_eq!(dp.drops(DropReason::SpoofedIp), before + 1, "from {src}");
    }
    assert_eq!(
        dp.datapath.endpoint_stats(A_IP).expect("stats").rx_packets,
        0
    );
}

/// Expects: SHOT and `spoofed_mac` +1 for A's address with another MAC.
#[test]
fn from_container_antispoof_foreign_mac() {
    let mut dp = Loaded::new();
    let (verdict, _) = dp.run(
        PROG_FROM_CONTAINER,
        &ipv4_frame([2, 0, 0, 0, 0, 9], A.host_mac, A_IP, B_IP, 0),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::SpoofedMac), 1);
}

/// Expects: SHOT and `malformed` for a cut ARP body and for IPv4 IHL < 5;
/// SHOT and `unsupported_l3` for IPv6. (The kernel's test run refuses an
/// IPv4 frame shorter than an IP header with EINVAL before the program
/// runs, so truncation is exercised with ARP; the bounds check is shared.)
#[test]
fn from_container_parse_bad_headers() {
    let mut dp = Loaded::new();
    let arp = arp_frame(A.mac, A.mac, A_IP, GATEWAY_V4, 1);
    let (verdict, _) = dp.run(PROG_FROM_CONTAINER, &arp[..ETH_PLUS(10)]);
    assert_eq!(verdict, TC_ACT_SHOT, "truncated");
    let mut bad_ihl = ipv4_frame(A.mac, A.host_mac, A_IP, B_IP, 0);
    bad_ihl[14] = 0x44;
    let (verdict, _) = dp.run(PROG_FROM_CONTAINER, &bad_ihl);
    assert_eq!(verdict, TC_ACT_SHOT, "IHL 4");
    assert_eq!(dp.drops(DropReason::Malformed), 2);

    let mut v6 = eth(A.host_mac, A.mac, 0x86dd);
    v6.extend_from_slice(&[0x60; 40]);
    let (verdict, _) = dp.run(PROG_FROM_CONTAINER, &v6);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::UnsupportedL3), 1);
}

#[expect(non_snake_case, reason = "reads as a length expression")]
const fn ETH_PLUS(n: usize) -> usize {
    14 + n
}

/// Expects: traffic for the outside is never left to the host stack: with
/// no route (the test run's device has forwarding off) it is dropped as
/// `no_route`; a later fragment whose first fragment was never seen, as
/// `fragment_unknown`.
#[test]
fn from_container_outside_is_translated_or_dropped() {
    let mut dp = Loaded::new();
    let outside = Ipv4Addr::new(198, 51, 100, 1);
    let (verdict, _) = dp.run(
        PROG_FROM_CONTAINER,
        &ipv4_frame(A.mac, A.host_mac, A_IP, outside, 0),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::NoRoute), 1);
    let mut fragment = ipv4_frame(A.mac, A.host_mac, A_IP, outside, 0);
    fragment[21] = 0x10; // offset 16 bytes: a later fragment
    let (verdict, _) = dp.run(PROG_FROM_CONTAINER, &fragment);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::FragmentUnknown), 1);
}

/// Expects: SHOT and `policy_denied` between endpoints of two networks.
#[test]
fn from_container_policy_cross_network() {
    let mut dp = Loaded::new();
    let other = Ipv4Addr::new(10, 66, 1, 5);
    dp.datapath
        .add_endpoint(
            other,
            Endpoint {
                net_id: 1,
                ifindex: 78,
                ..B
            },
        )
        .expect("endpoint");
    let (verdict, _) = dp.run(
        PROG_FROM_CONTAINER,
        &ipv4_frame(A.mac, A.host_mac, A_IP, other, 0),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::PolicyDenied), 1);
}

/// Expects, with A and B on network 3: with icc off (`NET_NO_ICC`) A's
/// packet to B is SHOT as `policy_denied`; with the network internal
/// (`NET_INTERNAL`, icc on) A reaches B but neither the outside nor a host
/// address; with no policy entry, B again.
#[test]
fn from_container_policy_icc_and_internal() {
    let mut dp = Loaded::new();
    let host = Ipv4Addr::new(10, 200, 0, 1);
    dp.datapath.set_host_addrs(&[host]).expect("host addrs");
    for (ip, ep) in [(A_IP, A), (B_IP, B)] {
        dp.datapath
            .add_endpoint(ip, Endpoint { net_id: 3, ..ep })
            .expect("endpoint");
    }
    let to = |dst| ipv4_frame(A.mac, A.host_mac, A_IP, dst, 0);
    dp.datapath.set_network(3, NET_NO_ICC).expect("policy");
    assert_eq!(dp.run(PROG_FROM_CONTAINER, &to(B_IP)).0, TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::PolicyDenied), 1);

    dp.datapath.set_network(3, NET_INTERNAL).expect("policy");
    assert_eq!(dp.run(PROG_FROM_CONTAINER, &to(B_IP)).0, TC_ACT_REDIRECT);
    for dst in [Ipv4Addr::new(198, 51, 100, 1), host] {
        assert_eq!(
            dp.run(PROG_FROM_CONTAINER, &to(dst)).0,
            TC_ACT_SHOT,
            "{dst}"
        );
    }
    assert_eq!(dp.drops(DropReason::PolicyDenied), 3);

    dp.datapath.remove_network(3).expect("no policy");
    assert_eq!(dp.run(PROG_FROM_CONTAINER, &to(B_IP)).0, TC_ACT_REDIRECT);
    assert_eq!(dp.run(PROG_FROM_CONTAINER, &to(host)).0, TC_ACT_OK);
}

/// Expects: a request for the gateway comes back as the reply (REDIRECT out
/// of the same veth): sender = gateway at A's host-side MAC, target = A.
#[test]
fn from_container_arp_gateway_reply() {
    let mut dp = Loaded::new();
    let (verdict, out) = dp.run(
        PROG_FROM_CONTAINER,
        &arp_frame(A.mac, A.mac, A_IP, GATEWAY_V4, 1),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &A.mac, "to A");
    assert_eq!(&out[6..12], &A.host_mac, "from the gateway MAC");
    assert_eq!(&out[20..22], &2u16.to_be_bytes(), "a reply");
    assert_eq!(&out[22..28], &A.host_mac, "sender MAC");
    assert_eq!(&out[28..32], &GATEWAY_V4, "sender IP");
    assert_eq!(&out[32..38], &A.mac, "target MAC");
    assert_eq!(&out[38..42], &A_IP.octets(), "target IP");
}

/// Expects: a request for another next hop (a Docker network's gateway) is
/// answered like the gateway's, from that address; a probe for the
/// container's own address and a reply pass to the host; ARP whose body
/// names another MAC or address is dropped as spoofed.
#[test]
fn from_container_arp_validation() {
    let mut dp = Loaded::new();
    let docker_gateway = Ipv4Addr::new(10, 89, 0, 1);
    let (verdict, out) = dp.run(
        PROG_FROM_CONTAINER,
        &arp_frame(A.mac, A.mac, A_IP, docker_gateway.octets(), 1),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[22..28], &A.host_mac, "sender MAC");
    assert_eq!(&out[28..32], &docker_gateway.octets(), "sender IP");
    for (tpa, oper) in [(A_IP.octets(), 1), (B_IP.octets(), 2)] {
        let (verdict, _) = dp.run(
            PROG_FROM_CONTAINER,
            &arp_frame(A.mac, A.mac, A_IP, tpa, oper),
        );
        assert_eq!(verdict, TC_ACT_OK, "{tpa:?} op {oper}");
    }
    let (verdict, _) = dp.run(
        PROG_FROM_CONTAINER,
        &arp_frame(A.mac, [2, 0, 0, 0, 0, 9], A_IP, GATEWAY_V4, 1),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::SpoofedMac), 1);
    let (verdict, _) = dp.run(
        PROG_FROM_CONTAINER,
        &arp_frame(A.mac, A.mac, B_IP, GATEWAY_V4, 1),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::SpoofedIp), 1);
}

/// Expects: OK, and the packet counted as received by its destination.
#[test]
fn to_container_counts_delivery() {
    let mut dp = Loaded::new();
    let frame = ipv4_frame(A.host_mac, A.mac, Ipv4Addr::new(192, 0, 2, 1), A_IP, 0);
    let (verdict, out) = dp.run(PROG_TO_CONTAINER, &frame);
    assert_eq!((verdict, out), (TC_ACT_OK, frame.clone()));
    let a = dp.datapath.endpoint_stats(A_IP).expect("stats");
    assert_eq!((a.rx_packets, a.rx_bytes), (1, frame.len() as u64));
}

/// Expects, for TCP and UDP: the request is DNAT'ed to A:80 and redirected
/// with A's MACs and valid checksums; A's reply is translated back to
/// HOST_IP:8080, addressed to the client's MAC from the uplink's, with
/// valid checksums. The addresses' 16-bit sums differ, so a missing
/// checksum fix would show.
#[test]
fn uplink_dnat_published_port_and_reply() {
    for proto in [6u8, 17] {
        let mut dp = Loaded::new();
        publish(&mut dp, proto, 8080, 80);
        let request = l4_frame(
            proto,
            (CLIENT, 40000),
            (HOST_IP, 8080),
            (CLIENT_MAC, UPLINK_MAC),
            false,
        );
        let (verdict, out) = dp.run(PROG_UPLINK_INGRESS, &request);
        assert_eq!(verdict, TC_ACT_REDIRECT, "proto {proto}: request");
        assert_eq!((&out[0..6], &out[6..12]), (&A.mac[..], &A.host_mac[..]));
        assert_eq!(
            (ip_src(&out), sport(&out)),
            (CLIENT, 40000),
            "the client stays visible"
        );
        assert_eq!((ip_dst(&out), dport(&out)), (A_IP, 80));
        assert_eq!(out[22], 63, "the host is a router hop: TTL 64 -> 63");
        assert_checksums_valid(&out, "request");
        assert_eq!(
            dp.datapath.endpoint_stats(A_IP).expect("stats").rx_packets,
            1
        );

        let reply = l4_frame(
            proto,
            (A_IP, 80),
            (CLIENT, 40000),
            (A.mac, A.host_mac),
            false,
        );
        let (verdict, out) = dp.run(PROG_FROM_CONTAINER, &reply);
        assert_eq!(verdict, TC_ACT_REDIRECT, "proto {proto}: reply");
        assert_eq!(
            (&out[0..6], &out[6..12]),
            (&CLIENT_MAC[..], &UPLINK_MAC[..])
        );
        assert_eq!((ip_src(&out), sport(&out)), (HOST_IP, 8080));
        assert_eq!((ip_dst(&out), dport(&out)), (CLIENT, 40000));
        assert_eq!(out[22], 63, "TTL on the way out");
        assert_checksums_valid(&out, "reply");

        // The next request of the flow hits conntrack.
        let (verdict, out) = dp.run(PROG_UPLINK_INGRESS, &request);
        assert_eq!((verdict, ip_dst(&out)), (TC_ACT_REDIRECT, A_IP));
    }
}

/// Expects, for TCP and UDP: a local connection to a published port on
/// `lo` (a socket the cgroup hooks did not translate) is DNAT'ed to A:80
/// and masqueraded to the gateway address on a port of the masquerade
/// range; A's reply to that address comes out as the published port's
/// reply on loopback, with valid checksums both ways. Other loopback
/// traffic passes untouched.
#[test]
fn local_ingress_hairpins_a_local_connection_and_its_reply() {
    const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
    const NO_MAC: [u8; 6] = [0; 6];
    for proto in [6u8, 17] {
        let mut dp = Loaded::new();
        publish(&mut dp, proto, 8080, 80);
        let other = l4_frame(
            proto,
            (LOOPBACK, 40000),
            (LOOPBACK, 5432),
            (NO_MAC, NO_MAC),
            false,
        );
        assert_eq!(dp.run(PROG_LOCAL_INGRESS, &other), (TC_ACT_OK, other));
        let request = l4_frame(
            proto,
            (LOOPBACK, 40000),
            (LOOPBACK, 8080),
            (NO_MAC, NO_MAC),
            false,
        );
        let (verdict, out) = dp.run(PROG_LOCAL_INGRESS, &request);
        assert_eq!(verdict, TC_ACT_REDIRECT, "proto {proto}: request");
        assert_eq!((&out[0..6], &out[6..12]), (&A.mac[..], &A.host_mac[..]));
        assert_eq!((ip_dst(&out), dport(&out)), (A_IP, 80));
        let port = sport(&out);
        assert_eq!(ip_src(&out), Ipv4Addr::from(GATEWAY_V4));
        assert!(
            (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port),
            "masquerade port {port}"
        );
        assert_checksums_valid(&out, "request");

        let reply = l4_frame(
            proto,
            (A_IP, 80),
            (Ipv4Addr::from(GATEWAY_V4), port),
            (A.mac, A.host_mac),
            false,
        );
        let (verdict, out) = dp.run(PROG_FROM_CONTAINER, &reply);
        assert_eq!(verdict, TC_ACT_REDIRECT, "proto {proto}: reply");
        assert_eq!((&out[0..6], &out[6..12]), (&NO_MAC[..], &NO_MAC[..]));
        assert_eq!((ip_src(&out), sport(&out)), (LOOPBACK, 8080));
        assert_eq!((ip_dst(&out), dport(&out)), (LOOPBACK, 40000));
        assert_checksums_valid(&out, "reply");

        // The flow's next packet reuses both translations.
        let (verdict, out) = dp.run(PROG_LOCAL_INGRESS, &request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            (ip_src(&out), sport(&out)),
            (Ipv4Addr::from(GATEWAY_V4), port)
        );
    }
}

/// Expects: a UDP checksum of 0 ("none") stays 0 through the rewrite.
#[test]
fn uplink_dnat_udp_without_checksum() {
    let mut dp = Loaded::new();
    publish(&mut dp, 17, 5353, 53);
    let request = l4_frame(
        17,
        (CLIENT, 40000),
        (HOST_IP, 5353),
        (CLIENT_MAC, UPLINK_MAC),
        true,
    );
    let (verdict, out) = dp.run(PROG_UPLINK_INGRESS, &request);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[40..42], &[0, 0], "UDP checksum must stay 0");
    assert_eq!(inet_sum(&out[14..34], 0), 0, "IPv4 header checksum");
}

/// Expects: OK and the frame untouched for a port nobody published, for a
/// publish on every address when the destination is not a host address,
/// for the other protocol, and for a fragment.
#[test]
fn uplink_pass_what_is_not_published() {
    let mut dp = Loaded::new();
    publish(&mut dp, 6, 8080, 80);
    let elsewhere = Ipv4Addr::new(10, 200, 0, 99);
    let mut fragment = l4_frame(
        6,
        (CLIENT, 40000),
        (HOST_IP, 8080),
        (CLIENT_MAC, UPLINK_MAC),
        false,
    );
    fragment[21] = 0x10; // a later fragment of a datagram nobody translated
    for frame in [
        l4_frame(
            6,
            (CLIENT, 40000),
            (HOST_IP, 8081),
            (CLIENT_MAC, UPLINK_MAC),
            false,
        ),
        l4_frame(
            6,
            (CLIENT, 40000),
            (elsewhere, 8080),
            (CLIENT_MAC, UPLINK_MAC),
            false,
        ),
        l4_frame(
            17,
            (CLIENT, 40000),
            (HOST_IP, 8080),
            (CLIENT_MAC, UPLINK_MAC),
            false,
        ),
        fragment,
    ] {
        let (verdict, out) = dp.run(PROG_UPLINK_INGRESS, &frame);
        assert_eq!((verdict, &out), (TC_ACT_OK, &frame));
    }
}

/// Expects: an ICMP error from a router about a published-port reply (it
/// quotes HOST_IP:8080 -> CLIENT) reaches the container rewritten: outer
/// destination A, quoted source A:80, and every checksum (outer IPv4,
/// quoted IPv4, ICMP over the whole message) still valid.
#[test]
fn uplink_icmp_error_for_a_published_flow() {
    let mut dp = Loaded::new();
    publish(&mut dp, 6, 8080, 80);
    let request = l4_frame(
        6,
        (CLIENT, 40000),
        (HOST_IP, 8080),
        (CLIENT_MAC, UPLINK_MAC),
        false,
    );
    assert_eq!(dp.run(PROG_UPLINK_INGRESS, &request).0, TC_ACT_REDIRECT);
    // The reply as it left the host: from the published address.
    let reply_seen = l4_frame(
        6,
        (HOST_IP, 8080),
        (CLIENT, 40000),
        (UPLINK_MAC, CLIENT_MAC),
        false,
    );
    let router = Ipv4Addr::new(198, 51, 100, 9);
    let error = frag_needed(router, HOST_IP, &reply_seen);
    let (verdict, out) = dp.run(PROG_UPLINK_INGRESS, &error);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((&out[0..6], &out[6..12]), (&A.mac[..], &A.host_mac[..]));
    assert_eq!(
        (ip_src(&out), ip_dst(&out)),
        (router, A_IP),
        "outer addresses"
    );
    let quoted = &out[42..];
    assert_eq!(
        Ipv4Addr::new(quoted[12], quoted[13], quoted[14], quoted[15]),
        A_IP,
        "quoted source"
    );
    assert_eq!(
        u16::from_be_bytes([quoted[20], quoted[21]]),
        80,
        "quoted source port"
    );
    assert_eq!(
        Ipv4Addr::new(quoted[16], quoted[17], quoted[18], quoted[19]),
        CLIENT,
        "quoted destination"
    );
    assert_eq!(inet_sum(&out[14..34], 0), 0, "outer IPv4 checksum");
    assert_eq!(inet_sum(&quoted[..20], 0), 0, "quoted IPv4 checksum");
    assert_eq!(inet_sum(&out[34..], 0), 0, "ICMP checksum");

    // An error quoting a flow nobody translated passes untouched.
    let stranger = l4_frame(
        6,
        (HOST_IP, 9999),
        (CLIENT, 40000),
        (UPLINK_MAC, CLIENT_MAC),
        false,
    );
    let error = frag_needed(router, HOST_IP, &stranger);
    let (verdict, out) = dp.run(PROG_UPLINK_INGRESS, &error);
    assert_eq!((verdict, out), (TC_ACT_OK, error));
}

/// Expects: traffic for the host (a published-port request, ARP) passes;
/// packets from outside addressed to a container, or carrying a
/// container's source address, are dropped and counted; malformed IPv4
/// (bad IHL, total length beyond the frame) is dropped as `malformed`.
#[test]
fn xdp_prefilter_drops_what_cannot_come_from_outside() {
    let mut dp = Loaded::new();
    let to_host = l4_frame(
        6,
        (CLIENT, 40000),
        (HOST_IP, 8080),
        (CLIENT_MAC, UPLINK_MAC),
        false,
    );
    assert_eq!(dp.run(PROG_XDP_PREFILTER, &to_host).0, XDP_PASS);
    let arp = arp_frame(CLIENT_MAC, CLIENT_MAC, CLIENT, HOST_IP.octets(), 1);
    assert_eq!(dp.run(PROG_XDP_PREFILTER, &arp).0, XDP_PASS);

    let to_container = l4_frame(
        6,
        (CLIENT, 40000),
        (A_IP, 80),
        (CLIENT_MAC, UPLINK_MAC),
        false,
    );
    assert_eq!(dp.run(PROG_XDP_PREFILTER, &to_container).0, XDP_DROP);
    assert_eq!(dp.drops(DropReason::OutsideToContainer), 1);

    let spoofed = l4_frame(
        6,
        (B_IP, 80),
        (HOST_IP, 8080),
        (CLIENT_MAC, UPLINK_MAC),
        false,
    );
    assert_eq!(dp.run(PROG_XDP_PREFILTER, &spoofed).0, XDP_DROP);
    assert_eq!(dp.drops(DropReason::OutsideSpoofed), 1);

    let mut bad_ihl = to_host.clone();
    bad_ihl[14] = 0x44;
    let mut too_long = to_host.clone();
    too_long[16..18].copy_from_slice(&1500u16.to_be_bytes());
    for frame in [bad_ihl, too_long] {
        assert_eq!(dp.run(PROG_XDP_PREFILTER, &frame).0, XDP_DROP);
    }
    assert_eq!(dp.drops(DropReason::Malformed), 2);
}

/// Expects: the first fragment of a UDP datagram to a published port is
/// translated and records the translation; a later fragment of the same
/// datagram (same id, no UDP header) follows it into the container with
/// only its destination address rewritten and a valid IPv4 checksum.
#[test]
fn uplink_dnat_fragments_follow_the_first() {
    let mut dp = Loaded::new();
    publish(&mut dp, 17, 5353, 53);
    let mut first = l4_frame(
        17,
        (CLIENT, 40000),
        (HOST_IP, 5353),
        (CLIENT_MAC, UPLINK_MAC),
        false,
    );
    first[20] |= 0x20; // more fragments, offset 0
    let sum = inet_sum(
        &{
            let mut h = first[14..34].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        },
        0,
    );
    first[24..26].copy_from_slice(&sum.to_be_bytes());
    let (verdict, out) = dp.run(PROG_UPLINK_INGRESS, &first);
    assert_eq!(
        (verdict, ip_dst(&out), dport(&out)),
        (TC_ACT_REDIRECT, A_IP, 53)
    );

    let mut later = first[..34].to_vec();
    later[20] = 0x00;
    later[21] = 0x02; // offset 16 bytes, last fragment
    later.extend_from_slice(b"rest of the datagram");
    let total = (later.len() - 14) as u16;
    later[16..18].copy_from_slice(&total.to_be_bytes());
    later[24] = 0;
    later[25] = 0;
    let sum = inet_sum(&later[14..34], 0);
    later[24..26].copy_from_slice(&sum.to_be_bytes());
    let (verdict, out) = dp.run(PROG_UPLINK_INGRESS, &later);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((ip_src(&out), ip_dst(&out)), (CLIENT, A_IP));
    assert_eq!((&out[0..6], &out[6..12]), (&A.mac[..], &A.host_mac[..]));
    assert_eq!(inet_sum(&out[14..34], 0), 0, "IPv4 checksum");
    assert_eq!(&out[34..], b"rest of the datagram", "payload untouched");
}

/// A map pinned by a build with another layout is made anew when the
/// datapath loads (reused, its values would be read with this build's
/// layout); maps with this build's layout keep their entries.
#[test]
fn load_remakes_pinned_maps_of_another_layout() {
    let mut dp = Loaded::new();
    dp.datapath
        .set_host_addrs(&[Ipv4Addr::new(192, 0, 2, 1)])
        .expect("host addrs");
    let endpoints = dp.pin_dir.join("endpoints");
    std::fs::remove_file(&endpoints).expect("unpin endpoints");
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&endpoints)
        .args([
            "type",
            "hash",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "16",
            "name",
            "endpoints",
        ])
        .status()
        .expect("bpftool");
    assert!(made.success(), "bpftool map create");

    let mut again = Datapath::load(&dp.pin_dir).expect("load over a changed map");
    let info = aya::maps::MapInfo::from_pin(&endpoints).expect("endpoints pinned");
    assert_eq!(info.value_size() as usize, size_of::<Endpoint>());
    assert_eq!(entries(&again, "host_addrs"), 1, "kept with its entry");
    assert_eq!(entries(&again, "endpoints"), 0, "made anew, empty");
    again
        .add_endpoint(A_IP, A)
        .expect("endpoint A in the new map");
    assert_eq!(entries(&again, "endpoints"), 1);
}
