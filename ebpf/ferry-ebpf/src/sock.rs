//! cgroup socket hooks: local clients reach published ports at connect or
//! send time, with no proxy and no per-packet NAT.
//!
//! A cgroup hook sees sockets of every network namespace its processes use.
//! These programs act only in namespaces listed in `sock_netns` (ferryd's
//! own and its containers'), and only rewrite to a published port's
//! container, whose address those namespaces route to the container.
//! Everything else passes untouched. Verdict: always 1 (allow).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use ferry_common::{
    IPPROTO_TCP, IPPROTO_UDP, Ipv4Key, NETNS_HOST, PortTarget, SockPeer, SockRevKey,
};

use crate::maps::{host_addrs, sock_netns, sock_peer, sock_revnat};

const ALLOW: i32 = 1;

/// cgroup/connect4: `connect()` to a published port.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Peer::Connected);
    ALLOW
}

/// cgroup/sendmsg4: `sendto()` on an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Peer::Datagram);
    ALLOW
}

/// cgroup/recvmsg4: the source of a datagram from a translated peer reads
/// as the published address.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    ALLOW
}

/// cgroup/getpeername4: a translated socket's peer reads as the published
/// address.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_peername4(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    ALLOW
}

/// The kind of namespace the socket lives in, if ferry serves it.
#[inline(always)]
fn served(ctx: &SockAddrContext) -> Option<u32> {
    // SAFETY: a plain helper call on the program's context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: hash map values are valid for the program run; copied out.
    unsafe { sock_netns.get(cookie) }.copied()
}

/// How a translated socket talks to its container, and so where what it
/// asked for is kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// `connect`: one peer for the socket's life, kept on the socket
    /// (`sock_peer`).
    Connected,
    /// `sendmsg` on an unconnected UDP socket: each datagram may go to
    /// another published port, kept by destination (`sock_revnat`).
    Datagram,
}

#[inline(always)]
fn translate(ctx: &SockAddrContext, peer: Peer) {
    let Some(kind) = served(ctx) else {
        return;
    };
    let Some((asked, target)) = published_target(ctx, kind) else {
        if peer == Peer::Connected {
            // A socket connected again, now to something not translated
            // (even straight to the container a published port leads to):
            // what it asked before no longer names its peer. A socket that
            // never had a value (nearly all) finds none: -ENOENT, ignored.
            // SAFETY: the context's socket is valid for the program run.
            let _ = unsafe { sock_peer.delete((*ctx.sock_addr).__bindgen_anon_1.sk) };
        }
        return;
    };
    match peer {
        Peer::Connected => {
            let mut value = SockPeer { asked, target };
            // SAFETY: the context's socket is valid for the program run;
            // the storage lives as long as the socket. An existing value
            // (a UDP socket connected again) is overwritten.
            unsafe {
                let slot = sock_peer.get_or_insert_ptr_mut(ctx, Some(&mut value));
                if !slot.is_null() {
                    *slot = value;
                }
            }
        }
        Peer::Datagram => {
            // SAFETY: a plain helper call on the program's context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let key = SockRevKey {
                cookie,
                ip: target.ip,
                port: target.port,
                pad: [0; 2],
            };
            let _ = sock_revnat.insert(key, asked, 0);
        }
    }
    let sa = ctx.sock_addr;
    // SAFETY: user_ip4 and user_port are writable in connect4/sendmsg4;
    // both must be written as 4-byte words.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(target.ip);
        (*sa).user_port = u32::from(u16::from_ne_bytes(target.port));
    }
}

/// What the socket asks for (address and port, if a published port of a
/// namespace of `kind`) and the container it leads to.
#[inline(always)]
fn published_target(ctx: &SockAddrContext, kind: u32) -> Option<(PortTarget, PortTarget)> {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's bpf_sock_addr context; these fields are readable
    // in connect4 and sendmsg4.
    let (ip, port, proto) = unsafe {
        (
            (*sa).user_ip4.to_ne_bytes(),
            ((*sa).user_port as u16).to_ne_bytes(),
            (*sa).protocol,
        )
    };
    let proto = match proto {
        p if p == u32::from(IPPROTO_TCP) => IPPROTO_TCP,
        p if p == u32::from(IPPROTO_UDP) => IPPROTO_UDP,
        _ => return None,
    };
    let loopback = ip[0] == 127;
    // SAFETY: as in `served`.
    let host_addr = unsafe { host_addrs.get(Ipv4Key { ip }) }.is_some();
    if !(host_addr || (loopback && kind == NETNS_HOST)) {
        return None;
    }
    let target = crate::uplink::published(ip, port, proto)?;
    let asked = PortTarget {
        ip,
        port,
        pad: [0; 2],
    };
    Some((asked, target))
}

#[inline(always)]
fn restore(ctx: &SockAddrContext) {
    if served(ctx).is_none() {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: readable fields of the context.
    let (ip, port) = unsafe {
        (
            (*sa).user_ip4.to_ne_bytes(),
            ((*sa).user_port as u16).to_ne_bytes(),
        )
    };
    // SAFETY: the context's socket is valid for the program run; the
    // value is copied out.
    let connected = unsafe {
        let slot = sock_peer.get_ptr_mut(ctx);
        if slot.is_null() { None } else { Some(*slot) }
    };
    let orig = match connected {
        Some(p) if p.target.ip == ip && p.target.port == port => p.asked,
        _ => {
            // SAFETY: a plain helper call on the program's context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let key = SockRevKey {
                cookie,
                ip,
                port,
                pad: [0; 2],
            };
            // SAFETY: as in `served`.
            let Some(orig) = (unsafe { sock_revnat.get(key) }).copied() else {
                return;
            };
            orig
        }
    };
    // SAFETY: user_ip4 and user_port are writable in recvmsg4/getpeername4.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(orig.ip);
        (*sa).user_port = u32::from(u16::from_ne_bytes(orig.port));
    }
}
