//! Packet tests of conntrack's two tables with BPF_PROG_TEST_RUN: flows
//! are created in `ct_new`, promoted to `ct` when assured, demoted when
//! they close, and a flood of new flows evicts only from `ct_new`. Needs
//! root (the programs are loaded for real), no namespace or interface.

mod common;

use std::{collections::HashSet, net::Ipv4Addr};

use common::*;
use ferry_common::{DropReason, GATEWAY_V4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use ferry_net::datapath::{
    MAP_CT, MAP_CT_NEW, MapSizes, PROG_FROM_CONTAINER, PROG_LOCAL_INGRESS, PROG_UPLINK_INGRESS,
};

/// Entries in (`ct`, `ct_new`).
fn tables(dp: &Loaded) -> (usize, usize) {
    (
        entries(&dp.datapath, MAP_CT),
        entries(&dp.datapath, MAP_CT_NEW),
    )
}

/// A client's segment to the published HOST_IP:8080 from `port`.
fn from_client(flags: u8, port: u16) -> Vec<u8> {
    tcp_frame(
        flags,
        (CLIENT, port),
        (HOST_IP, 8080),
        (CLIENT_MAC, UPLINK_MAC),
    )
}

/// A's segment back to the client's `port`.
fn from_a(flags: u8, port: u16) -> Vec<u8> {
    tcp_frame(flags, (A_IP, 80), (CLIENT, port), (A.mac, A.host_mac))
}

/// Runs `frame` through `program`, expecting it translated and sent on.
fn pass(dp: &mut Loaded, program: &'static str, frame: &[u8], what: &str) -> Vec<u8> {
    let (verdict, out) = dp.run(program, frame);
    assert_eq!(verdict, TC_ACT_REDIRECT, "{what}");
    out
}

/// Who sends a segment of a published-port flow.
#[derive(Clone, Copy)]
enum Side {
    /// The client, to HOST_IP:8080.
    Client,
    /// Container A, back to the client.
    Container,
}
use Side::{Client, Container};

impl Side {
    /// Sends a segment with `flags` of the client's `port` flow, expecting
    /// it translated: to A:80 from the client, from HOST_IP:8080 to it.
    fn send(self, dp: &mut Loaded, flags: u8, port: u16, what: &str) {
        match self {
            Client => {
                let out = pass(dp, PROG_UPLINK_INGRESS, &from_client(flags, port), what);
                assert_eq!((ip_dst(&out), dport(&out)), (A_IP, 80), "{what}");
            }
            Container => {
                let out = pass(dp, PROG_FROM_CONTAINER, &from_a(flags, port), what);
                assert_eq!((ip_src(&out), sport(&out)), (HOST_IP, 8080), "{what}");
            }
        }
    }
}

/// A client's datagram to the published HOST_IP:5353 (A's port 53).
fn query() -> Vec<u8> {
    l4_frame(
        17,
        (CLIENT, 40000),
        (HOST_IP, 5353),
        (CLIENT_MAC, UPLINK_MAC),
        false,
    )
}

/// A's answer to it.
fn answer() -> Vec<u8> {
    l4_frame(17, (A_IP, 53), (CLIENT, 40000), (A.mac, A.host_mac), false)
}

/// A published-port handshake from the client's `port`, completed.
fn handshake(dp: &mut Loaded, port: u16) {
    Client.send(dp, TCP_SYN, port, "SYN");
    Container.send(dp, TCP_SYN | TCP_ACK, port, "SYN-ACK");
    Client.send(dp, TCP_ACK, port, "ACK");
}

/// Expects: a published-port flow is in `ct_new` through SYN and SYN-ACK,
/// moves to `ct` (both directions) with the originator's ACK, stays there
/// through a half-close, and goes back to `ct_new` with the second FIN,
/// translated all along; every move is counted.
#[test]
fn ct_handshake_promotes_and_close_demotes() {
    let mut dp = Loaded::new();
    publish(&mut dp, 6, 8080, 80);
    // (who sends, flags, tables after: (ct, ct_new), what it shows)
    let steps = [
        (Client, TCP_SYN, (0, 2), "half-open: unassured"),
        (
            Container,
            TCP_SYN | TCP_ACK,
            (0, 2),
            "answered, not acknowledged",
        ),
        (
            Client,
            TCP_SYN,
            (0, 2),
            "a retransmitted SYN completes nothing",
        ),
        (Client, TCP_ACK, (2, 0), "assured"),
        (Container, TCP_ACK, (2, 0), "data"),
        (
            Client,
            TCP_FIN | TCP_ACK,
            (2, 0),
            "half-closed: still assured",
        ),
        (Container, TCP_ACK, (2, 0), "more data after the half-close"),
        (
            Container,
            TCP_FIN | TCP_ACK,
            (0, 2),
            "closed both ways: unassured again",
        ),
        (
            Client,
            TCP_ACK,
            (0, 2),
            "the last ACK does not promote it again",
        ),
    ];
    for (side, flags, want, what) in steps {
        side.send(&mut dp, flags, 40000, what);
        assert_eq!(tables(&dp), want, "{what}");
    }
    let c = dp.datapath.ct_counts().expect("counts");
    assert_eq!(
        (c.new.entered, c.new.left, c.assured.entered, c.assured.left),
        (4, 2, 2, 2),
        "created 2, promoted 2, demoted 2: {c:?}"
    );
    assert_eq!((c.new.evicted(2), c.assured.evicted(0)), (0, 0));
}

/// Expects: a RST from the responder demotes an assured flow too.
#[test]
fn ct_reset_demotes() {
    let mut dp = Loaded::new();
    publish(&mut dp, 6, 8080, 80);
    handshake(&mut dp, 40001);
    assert_eq!(tables(&dp), (2, 0));
    pass(&mut dp, PROG_FROM_CONTAINER, &from_a(TCP_RST, 40001), "RST");
    assert_eq!(tables(&dp), (0, 2));
}

/// Expects: a UDP flow is assured once answered and the originator sends
/// again; unanswered datagrams leave it in `ct_new`.
#[test]
fn ct_udp_is_promoted_once_answered() {
    let mut dp = Loaded::new();
    publish(&mut dp, 17, 5353, 53);
    let (request, answer) = (query(), answer());
    pass(&mut dp, PROG_UPLINK_INGRESS, &request, "query");
    pass(&mut dp, PROG_UPLINK_INGRESS, &request, "query again");
    assert_eq!(tables(&dp), (0, 2), "unanswered");
    pass(&mut dp, PROG_FROM_CONTAINER, &answer, "answer");
    assert_eq!(
        tables(&dp),
        (0, 2),
        "answered, the originator not heard since"
    );
    pass(&mut dp, PROG_UPLINK_INGRESS, &request, "next query");
    assert_eq!(tables(&dp), (2, 0), "assured");
    let out = pass(&mut dp, PROG_FROM_CONTAINER, &answer, "next answer");
    assert_eq!((ip_src(&out), sport(&out)), (HOST_IP, 5353));
}

/// Expects: a SYN flood of many more flows than `ct_new` holds evicts
/// only from `ct_new` (counted as unassured evictions); the assured flow
/// keeps both entries in `ct` and is translated after it; a handshake
/// started after the flood completes and is assured too.
#[test]
fn ct_flood_evicts_only_unassured_flows() {
    let mut dp = Loaded::sized(MapSizes {
        ct_new: 256,
        ..MapSizes::default()
    });
    publish(&mut dp, 6, 8080, 80);
    handshake(&mut dp, 40000);
    assert_eq!(tables(&dp), (2, 0));
    for i in 0..2000u16 {
        // A source address of its own for each SYN, as a spoofed flood has.
        let spoofed = Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8 + 1);
        let syn = tcp_frame(
            TCP_SYN,
            (spoofed, 20000 + i),
            (HOST_IP, 8080),
            (CLIENT_MAC, UPLINK_MAC),
        );
        dp.run(PROG_UPLINK_INGRESS, &syn);
    }
    let (assured, new) = tables(&dp);
    assert_eq!(assured, 2, "the assured flow is untouched");
    assert!(new <= 256, "ct_new holds {new}");
    let c = dp.datapath.ct_counts().expect("counts");
    assert!(
        c.new.evicted(new as u64) >= 2000 * 2 - 256,
        "flood evictions counted: {c:?}"
    );
    assert_eq!(c.assured.evicted(2), 0);

    let out = pass(
        &mut dp,
        PROG_FROM_CONTAINER,
        &from_a(TCP_ACK, 40000),
        "the assured flow's reply",
    );
    assert_eq!((ip_dst(&out), dport(&out)), (CLIENT, 40000));
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&CLIENT_MAC[..], &UPLINK_MAC[..])
    );
    handshake(&mut dp, 40002);
    assert_eq!(tables(&dp).0, 4, "a new flow is assured after the flood");
}

/// Expects: when `ct` is full, a flow that would be promoted stays in
/// `ct_new`, counted, and is translated as before.
#[test]
fn ct_full_assured_table_leaves_new_flows_unassured() {
    let mut dp = Loaded::sized(MapSizes {
        ct: 2,
        ..MapSizes::default()
    });
    publish(&mut dp, 6, 8080, 80);
    handshake(&mut dp, 40000);
    handshake(&mut dp, 40001);
    assert_eq!(tables(&dp), (2, 2));
    let c = dp.datapath.ct_counts().expect("counts");
    assert!(c.assured_full >= 1, "{c:?}");
    assert_eq!(c.assured.evicted(2), 0, "{c:?}");
    let out = pass(
        &mut dp,
        PROG_FROM_CONTAINER,
        &from_a(TCP_ACK, 40001),
        "the unassured flow's reply",
    );
    assert_eq!((ip_dst(&out), dport(&out)), (CLIENT, 40001));
}

/// Expects: local connections to one published port are masqueraded to
/// the gateway address on distinct ports, whichever table their flows are
/// in (each is assured once its handshake completes); when the range runs
/// out, a new connection is dropped as `snat_exhausted`, never given a
/// port a live flow holds.
#[test]
fn ct_masquerade_ports_never_collide_and_exhaustion_is_counted() {
    const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
    const NO_MAC: [u8; 6] = [0; 6];
    let mut dp = Loaded::new();
    publish(&mut dp, 6, 8080, 80);
    let mut ports = HashSet::new();
    let mut exhausted = 0;
    let span = usize::from(ferry_common::SNAT_PORT_MAX - ferry_common::SNAT_PORT_MIN) + 1;
    for i in 0..span as u16 + 200 {
        let client = (LOOPBACK, 1024 + i);
        let syn = tcp_frame(TCP_SYN, client, (LOOPBACK, 8080), (NO_MAC, NO_MAC));
        let (verdict, out) = dp.run(PROG_LOCAL_INGRESS, &syn);
        if verdict == TC_ACT_SHOT {
            exhausted += 1;
            continue;
        }
        assert_eq!(verdict, TC_ACT_REDIRECT, "connection {i}");
        let port = sport(&out);
        assert!(ports.insert(port), "port {port} given twice");
        // Half of the flows complete their handshake and are assured.
        if i % 2 == 0 {
            let gateway = (Ipv4Addr::from(GATEWAY_V4), port);
            let synack = tcp_frame(TCP_SYN | TCP_ACK, (A_IP, 80), gateway, (A.mac, A.host_mac));
            pass(&mut dp, PROG_FROM_CONTAINER, &synack, "SYN-ACK");
            let ack = tcp_frame(TCP_ACK, client, (LOOPBACK, 8080), (NO_MAC, NO_MAC));
            pass(&mut dp, PROG_LOCAL_INGRESS, &ack, "ACK");
        }
    }
    assert!(exhausted > 0, "the range never ran out");
    assert_eq!(dp.drops(DropReason::SnatExhausted), exhausted);
    assert!(tables(&dp).0 > 0, "assured flows held ports too");
    assert!(
        ports.len() > span * 8 / 10,
        "only {} of {span} ports were handed out",
        ports.len()
    );
}

/// The CPUs the kernel can ever bring up (`/sys/devices/system/cpu/possible`,
/// e.g. `0-1`): a per-CPU LRU map splits its capacity among them.
fn possible_cpus() -> usize {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/possible").expect("possible CPUs");
    list.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<usize>().expect("cpu") - a.parse::<usize>().expect("cpu") + 1,
            None => 1,
        })
        .sum()
}

/// Expects (what docs/datapath.md says of `ct_new`, a per-CPU LRU map):
/// new flows on one CPU start evicting when that CPU's share of the
/// capacity (capacity / possible CPUs) is full, not when the map is.
#[test]
fn ct_new_evicts_once_one_cpus_share_is_full() {
    const CAPACITY: u32 = 4096;
    let mut dp = Loaded::sized(MapSizes {
        ct_new: CAPACITY,
        ..MapSizes::default()
    });
    publish(&mut dp, 6, 8080, 80);
    let mut cpu0 = nix::sched::CpuSet::new();
    cpu0.set(0).expect("cpu 0");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0).expect("pin to cpu 0");
    let share = CAPACITY as usize / possible_cpus();
    let mut live_at_first_eviction = None;
    for batch in 0..(CAPACITY / 2 / 32 + 8) as u16 {
        for i in 0..32u16 {
            let n = batch * 32 + i;
            let source = Ipv4Addr::new(198, 18, (n / 250) as u8, (n % 250) as u8 + 1);
            let syn = tcp_frame(
                TCP_SYN,
                (source, 30000),
                (HOST_IP, 8080),
                (CLIENT_MAC, UPLINK_MAC),
            );
            dp.run(PROG_UPLINK_INGRESS, &syn);
        }
        let live = tables(&dp).1;
        let c = dp.datapath.ct_counts().expect("counts");
        if c.new.evicted(live as u64) > 0 {
            live_at_first_eviction = Some(live);
            break;
        }
    }
    let live = live_at_first_eviction.expect("no eviction though more flows than the capacity");
    assert!(
        live <= share && live + 64 >= share,
        "first eviction with {live} entries; one CPU's share is {share} of {CAPACITY}"
    );
}

/// The state `ferry conntrack list` shows for the only flow, read from
/// the pinned maps as ferryd reads them.
fn listed_state(dp: &Loaded) -> (String, bool) {
    let ct = ferry_net::conntrack::Conntrack::open(&dp.pin_dir).expect("open conntrack");
    let flows = ct.list(&ferry_net::conntrack::Timeouts::default());
    assert_eq!(flows.len(), 1, "{flows:#?}");
    (flows[0].state.clone(), flows[0].assured)
}

/// Expects: each packet of a published-port TCP flow moves it through the
/// states the GC times out (syn_sent, syn_recv, established, fin_wait,
/// closing), and a UDP flow through udp_unreplied, udp and udp_stream, as
/// the datapath records them; assured exactly where the table says so.
#[test]
fn ct_states_follow_the_packets() {
    let mut dp = Loaded::new();
    publish(&mut dp, 6, 8080, 80);
    let state = |dp: &Loaded| listed_state(dp);
    let steps: [(&'static str, Vec<u8>, (&str, bool)); 6] = [
        (
            PROG_UPLINK_INGRESS,
            from_client(TCP_SYN, 40000),
            ("syn_sent", false),
        ),
        (
            PROG_FROM_CONTAINER,
            from_a(TCP_SYN | TCP_ACK, 40000),
            ("syn_recv", false),
        ),
        (
            PROG_UPLINK_INGRESS,
            from_client(TCP_ACK, 40000),
            ("established", true),
        ),
        (
            PROG_UPLINK_INGRESS,
            from_client(TCP_FIN | TCP_ACK, 40000),
            ("fin_wait", true),
        ),
        (
            PROG_FROM_CONTAINER,
            from_a(TCP_FIN | TCP_ACK, 40000),
            ("closing", false),
        ),
        (
            PROG_UPLINK_INGRESS,
            from_client(TCP_ACK, 40000),
            ("closing", false),
        ),
    ];
    for (program, frame, (want, assured)) in steps {
        pass(&mut dp, program, &frame, want);
        assert_eq!(state(&dp), (want.to_owned(), assured));
    }

    let mut dp = Loaded::new();
    publish(&mut dp, 17, 5353, 53);
    let (query, answer) = (query(), answer());
    for (program, frame, (want, assured)) in [
        (PROG_UPLINK_INGRESS, &query, ("udp_unreplied", false)),
        (PROG_FROM_CONTAINER, &answer, ("udp", false)),
        (PROG_UPLINK_INGRESS, &query, ("udp_stream", true)),
    ] {
        pass(&mut dp, program, frame, want);
        assert_eq!(state(&dp), (want.to_owned(), assured));
    }
}
