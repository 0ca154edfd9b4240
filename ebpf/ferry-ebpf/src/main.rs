//! ferry's kernel side: one module per attach point (`lxc`: the host-side
//! veth of each container; `uplink`: the host's outside interfaces;
//! `macvlan`: the egress of uplinks that are macvlan parents; `local`: the
//! host's loopback; `xdp`: the uplinks' early prefilter; `sock`: cgroup socket hooks) and one
//! per subsystem (`parse`, `csum`, `ct`, `nat`, `frag`, `counters`, `cluster`), all maps in `maps`.
//!
//! Built for `bpfel-unknown-none` by `userspace/ferry-net/build.rs`; on any other
//! target this crate is an empty binary so workspace-wide tooling still works.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod cluster;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod ct;
#[cfg(target_arch = "bpf")]
mod debug;
#[cfg(target_arch = "bpf")]
mod frag;
#[cfg(target_arch = "bpf")]
mod local;
#[cfg(target_arch = "bpf")]
mod lxc;
#[cfg(target_arch = "bpf")]
mod macvlan;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod uplink;
#[cfg(target_arch = "bpf")]
mod xdp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic, so this is
    // never called; it only satisfies no_std linking.
    loop {}
}

/// "Dual MIT/GPL" makes the object GPL-compatible for the kernel, which
/// several helpers (e.g. `bpf_fib_lookup`) require.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
