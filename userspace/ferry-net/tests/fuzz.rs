//! Fuzzed frames through every program with BPF_PROG_TEST_RUN: damaged
//! seeds and random bytes in, a documented verdict and exactly one drop
//! counter per drop out. Needs root (the programs are loaded for real).

mod common;

use std::net::Ipv4Addr;

use common::*;
use ferry_common::GATEWAY_V4;
use ferry_net::datapath::{
    PROG_FROM_CONTAINER, PROG_LOCAL_INGRESS, PROG_TO_CONTAINER, PROG_UPLINK_INGRESS,
    PROG_XDP_PREFILTER,
};

/// Frames that reach deep into the programs: container traffic to a peer,
/// the gateway and the outside, requests to a published port, an ICMP
/// error about a published flow, a first fragment, ARP.
fn fuzz_seeds() -> Vec<Vec<u8>> {
    let outside = Ipv4Addr::new(198, 51, 100, 1);
    let request = l4_frame(
        6,
        (CLIENT, 40000),
        (HOST_IP, 8080),
        (CLIENT_MAC, UPLINK_MAC),
        false,
    );
    let reply = l4_frame(6, (A_IP, 80), (CLIENT, 40000), (A.mac, A.host_mac), false);
    let mut first_fragment = l4_frame(
        17,
        (CLIENT, 40001),
        (HOST_IP, 5353),
        (CLIENT_MAC, UPLINK_MAC),
        false,
    );
    first_fragment[20] |= 0x20;
    vec![
        ipv4_frame(A.mac, A.host_mac, A_IP, B_IP, 0),
        ipv4_frame(A.mac, A.host_mac, A_IP, B_IP, 8),
        l4_frame(6, (A_IP, 40000), (B_IP, 80), (A.mac, A.host_mac), false),
        l4_frame(17, (A_IP, 40000), (outside, 53), (A.mac, A.host_mac), true),
        arp_frame(A.mac, A.mac, A_IP, GATEWAY_V4, 1),
        frag_needed(Ipv4Addr::new(192, 0, 2, 254), HOST_IP, &reply),
        request,
        reply,
        first_fragment,
        l4_frame(
            17,
            (CLIENT, 40002),
            (HOST_IP, 5353),
            (CLIENT_MAC, UPLINK_MAC),
            false,
        ),
    ]
}

/// Every damaged variant of `seed` the fuzz test feeds: each truncation,
/// each IHL, odd total lengths, each IP protocol, fragment bits, bogus
/// checksums, VLAN tags, random byte flips.
fn fuzz_variants(seed: &[u8], rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (14..seed.len()).map(|n| seed[..n].to_vec()).collect();
    let with = |at: usize, bytes: &[u8]| {
        let mut f = seed.to_vec();
        if f.len() >= at + bytes.len() {
            f[at..at + bytes.len()].copy_from_slice(bytes);
        }
        f
    };
    let l3 = seed.len().saturating_sub(14) as u16;
    for ihl in 0..16u8 {
        out.push(with(14, &[0x40 | ihl]));
    }
    out.push(with(14, &[0x65])); // version 6 in an IPv4 frame
    for len in [0, 1, 19, 20, l3 - 1, l3 + 1, 1500, 0xffff] {
        out.push(with(16, &len.to_be_bytes()));
    }
    for proto in 0..=255u8 {
        out.push(with(23, &[proto]));
    }
    for frag in [
        [0x20, 0],
        [0x00, 0x01],
        [0x3f, 0xff],
        [0x40, 0x10],
        [0x80, 0],
    ] {
        out.push(with(20, &frag));
    }
    out.push(with(24, &[rng.byte(), rng.byte()])); // IPv4 checksum
    for at in [34 + 6, 34 + 16, 34 + 2] {
        out.push(with(at, &[rng.byte(), rng.byte()])); // UDP, TCP, ICMP checksum
    }
    for tpid in [[0x81, 0x00], [0x88, 0xa8]] {
        let mut f = seed[..12].to_vec();
        f.extend_from_slice(&tpid);
        f.extend_from_slice(&[0x00, 0x07]);
        f.extend_from_slice(&seed[12..]);
        out.push(f);
    }
    for _ in 0..200 {
        let mut f = seed.to_vec();
        for _ in 0..=rng.below(8) {
            let at = rng.below(f.len());
            f[at] = rng.byte();
        }
        out.push(f);
    }
    out
}

fn total_drops(dp: &mut Loaded) -> u64 {
    dp.datapath
        .drops()
        .expect("drops")
        .iter()
        .map(|(_, n)| n)
        .sum()
}

/// Expects, for every program and every frame (damaged seeds and random
/// bytes): the program runs (the kernel refuses only frames shorter than
/// its minimum before the program sees them), returns a verdict from its
/// documented set, and a drop verdict moves exactly one drop counter
/// while any other verdict moves none.
#[test]
fn every_program_survives_fuzzed_frames_and_counts_each_drop() {
    let mut dp = Loaded::new();
    publish(&mut dp, 6, 8080, 80);
    publish(&mut dp, 17, 5353, 53);
    let mut rng = Rng(0x0f0e_2024_dead_beef);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for seed in fuzz_seeds() {
        frames.extend(fuzz_variants(&seed, &mut rng));
        frames.push(seed);
    }
    for _ in 0..2000 {
        let len = 14 + rng.below(300);
        let mut f: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // Half of them claim to be IPv4, so they get past the EtherType.
        if rng.below(2) == 0 {
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            if len > 14 {
                f[14] = 0x45;
            }
        }
        frames.push(f);
    }
    let programs: [(&'static str, &[u32], u32); 5] = [
        (
            PROG_FROM_CONTAINER,
            &[TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT],
            TC_ACT_SHOT,
        ),
        (PROG_TO_CONTAINER, &[TC_ACT_OK, TC_ACT_SHOT], TC_ACT_SHOT),
        (
            PROG_UPLINK_INGRESS,
            &[TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT],
            TC_ACT_SHOT,
        ),
        (
            PROG_LOCAL_INGRESS,
            &[TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT],
            TC_ACT_SHOT,
        ),
        (PROG_XDP_PREFILTER, &[XDP_PASS, XDP_DROP], XDP_DROP),
    ];
    for (program, verdicts, drop) in programs {
        let (mut ran, mut refused, mut dropped) = (0, 0, 0);
        for (i, frame) in frames.iter().enumerate() {
            let before = total_drops(&mut dp);
            let verdict = match dp.datapath.test_run(program, frame) {
                Ok((verdict, _)) => verdict,
                Err(e) => {
                    assert!(
                        frame.len() < 34,
                        "{program}: frame {i} ({} bytes) refused: {e}\n{frame:02x?}",
                        frame.len()
                    );
                    refused += 1;
                    continue;
                }
            };
            ran += 1;
            assert!(
                verdicts.contains(&verdict),
                "{program}: frame {i}: verdict {verdict}\n{frame:02x?}"
            );
            let counted = total_drops(&mut dp) - before;
            let want = u64::from(verdict == drop);
            assert_eq!(
                counted, want,
                "{program}: frame {i}: verdict {verdict} moved the drop counters by {counted}\n{frame:02x?}"
            );
            dropped += want;
        }
        eprintln!(
            "{program}: {ran} frames run, {dropped} dropped, {refused} refused by the kernel"
        );
        assert!(ran > frames.len() * 9 / 10, "{program}: too few frames ran");
    }
}
