//! Container address allocation from one IPv4 subnet.
//!
//! Containers get /32 addresses behind a routed veth, so no address is lost
//! to a bridge; the network and broadcast addresses and the first host
//! address (kept for a future gateway, as Docker does) are never handed out.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
    #[error("{addr} is outside {subnet}")]
    OutOfRange { addr: Ipv4Addr, subnet: Ipv4Net },
    #[error("{0} is already in use")]
    InUse(Ipv4Addr),
}

#[derive(Debug, Clone)]
pub struct Ipam {
    subnet: Ipv4Net,
    used: BTreeSet<Ipv4Addr>,
    /// Where the next search starts, so freed addresses are not reused at
    /// once (a stale peer's ARP cache or conntrack entry would hit the new
    /// container).
    cursor: u32,
}

impl Ipam {
    pub fn new(subnet: Ipv4Net) -> Self {
        Self {
            subnet,
            used: BTreeSet::new(),
            cursor: 0,
        }
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    fn range(&self) -> (u32, u32) {
        let first = u32::from(self.subnet.network()) + 2;
        let last = u32::from(self.subnet.broadcast()) - 1;
        (first, last)
    }

    /// Marks an address taken (used when state is restored).
    pub fn reserve(&mut self, addr: Ipv4Addr) -> Result<(), IpamError> {
        let (first, last) = self.range();
        if !(first..=last).contains(&u32::from(addr)) {
            return Err(IpamError::OutOfRange {
                addr,
                subnet: self.subnet,
            });
        }
        if !self.used.insert(addr) {
            return Err(IpamError::InUse(addr));
        }
        Ok(())
    }

    /// Hands out the next free address after the last one allocated.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        let (first, last) = self.range();
        let size = last - first + 1;
        let start = self.cursor.clamp(first, last);
        for step in 0..size {
            let candidate = first + (start - first + step) % size;
            let addr = Ipv4Addr::from(candidate);
            if self.used.insert(addr) {
                self.cursor = candidate + 1;
                return Ok(addr);
            }
        }
        Err(IpamError::Exhausted(self.subnet))
    }

    pub fn release(&mut self, addr: Ipv4Addr) {
        self.used.remove(&addr);
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test subnet")
    }

    #[test]
    fn skips_network_first_host_and_broadcast() {
        let mut ipam = Ipam::new(net("10.1.0.0/29"));
        let got: Vec<_> = (0..5).map(|_| ipam.allocate().expect("free")).collect();
        let want: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(10, 1, 0, h)).collect();
        assert_eq!(got, want);
        assert_eq!(
            ipam.allocate(),
            Err(IpamError::Exhausted(net("10.1.0.0/29")))
        );
    }

    #[test]
    fn a_slash_30_holds_exactly_one_container() {
        let mut ipam = Ipam::new(net("10.1.0.0/30"));
        assert_eq!(ipam.allocate(), Ok(Ipv4Addr::new(10, 1, 0, 2)));
        assert!(ipam.allocate().is_err());
    }

    #[test]
    fn released_addresses_come_back_after_the_others() {
        let mut ipam = Ipam::new(net("10.1.0.0/29"));
        let a = ipam.allocate().expect("a");
        let b = ipam.allocate().expect("b");
        ipam.release(a);
        let c = ipam.allocate().expect("c");
        assert_ne!(c, a, "a freed address must not be reused at once");
        assert_ne!(c, b);
        for _ in 0..3 {
            ipam.allocate().expect("fill");
        }
        assert_eq!(ipam.in_use(), 5);
        ipam.release(b);
        assert_eq!(ipam.allocate(), Ok(b), "wraps around to freed addresses");
    }

    #[test]
    fn reserve_checks_range_and_duplicates() {
        let mut ipam = Ipam::new(net("10.1.0.0/24"));
        let addr = Ipv4Addr::new(10, 1, 0, 9);
        ipam.reserve(addr).expect("reserve");
        assert_eq!(ipam.reserve(addr), Err(IpamError::InUse(addr)));
        assert!(matches!(
            ipam.reserve(Ipv4Addr::new(10, 1, 0, 1)),
            Err(IpamError::OutOfRange { .. })
        ));
        assert!(matches!(
            ipam.reserve(Ipv4Addr::new(10, 2, 0, 9)),
            Err(IpamError::OutOfRange { .. })
        ));
        assert_ne!(ipam.allocate().expect("next"), addr);
    }
}
