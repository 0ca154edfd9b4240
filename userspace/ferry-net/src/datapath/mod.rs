//! The eBPF datapath: loads the embedded object, pins maps and programs
//! under the pin directory (default /sys/fs/bpf/ferry), attaches the
//! programs to container veths and writes the maps.
//!
//! Pins (one line each in docs/datapath.md):
//! - `<pin>/endpoints`, `<pin>/ep_stats`, `<pin>/drops`: the maps, reused by
//!   a restarted ferryd so counters and entries survive it;
//! - `<pin>/portmap`, `<pin>/host_addrs`: published ports, the host's
//!   addresses;
//! - `<pin>/ct`, `<pin>/ct_new`, `<pin>/ct_stats`: connection tracking
//!   (assured flows, flows not yet assured, their counters);
//! - `<pin>/sock_netns`, `<pin>/sock_peer`, `<pin>/sock_revnat`: namespaces
//!   the socket hooks serve, and what translated sockets asked for
//!   (connected ones on the socket itself, unconnected UDP by destination);
//! - `<pin>/progs/<program>`: the programs;
//! - `<pin>/links/sock_*`: the cgroup links of the socket hooks.
//!
//! Attachments (container veths and uplinks) are netlink cls_bpf filters
//! (`tc filter show`, `bpftool net show` list them by program name). They
//! belong to the interface, not to ferryd: they stay when ferryd exits and
//! go when the veth is deleted.
//!
//! `entries` writes and reads what the maps hold for ferryd's objects,
//! `pins` keeps the pin directory and wraps the bpf(2) commands aya does
//! not.

use std::{
    collections::HashMap,
    io,
    mem::ManuallyDrop,
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr, Program, ProgramError, SchedClassifier, TcAttachType,
        Xdp, XdpMode,
        links::{FdLink, Link as _},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle, qdisc_add_clsact},
    },
};
use ferry_common::{
    CONFIG_DEBUG_LOG, CONFIG_FLAGS, MAX_CT, MAX_CT_NEW, MAX_ENDPOINTS, MAX_PORTMAPS, PortKey,
};
use tracing::{debug, info};

mod entries;
mod pins;
mod remotes;
pub use remotes::pinned_remote_blocks;

pub(crate) use pins::lookup_batch;
use pins::{count_keys, remove_changed_maps, remove_stale_pins, update_pinned_link};

/// The kernel object built by build.rs from `ebpf/ferry-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ferry-datapath"));

pub const MAP_ENDPOINTS: &str = "endpoints";
pub const MAP_EP_STATS: &str = "ep_stats";
pub const MAP_DROPS: &str = "drops";
pub const MAP_PORTMAP: &str = "portmap";
pub const MAP_HOST_ADDRS: &str = "host_addrs";
pub const MAP_CT: &str = "ct";
pub const MAP_CT_NEW: &str = "ct_new";
pub const MAP_SOCK_NETNS: &str = "sock_netns";
pub const MAP_SOCK_REVNAT: &str = "sock_revnat";
pub const MAP_SOCK_PEER: &str = "sock_peer";
pub const MAP_FRAGS: &str = "frags";
pub const MAP_CONFIG: &str = "config";
pub const MAP_CT_STATS: &str = "ct_stats";
pub const MAP_PORT_STATS: &str = "port_stats";
pub const MAP_NETWORKS: &str = "networks";
pub const MAP_MACVLAN_PARENTS: &str = "macvlan_parents";
pub const MAP_REMOTES: &str = "remotes";
const MAPS: [&str; 17] = [
    MAP_ENDPOINTS,
    MAP_EP_STATS,
    MAP_DROPS,
    MAP_PORTMAP,
    MAP_HOST_ADDRS,
    MAP_CT,
    MAP_CT_NEW,
    MAP_SOCK_NETNS,
    MAP_SOCK_REVNAT,
    MAP_SOCK_PEER,
    MAP_FRAGS,
    MAP_CONFIG,
    MAP_CT_STATS,
    MAP_PORT_STATS,
    MAP_NETWORKS,
    MAP_MACVLAN_PARENTS,
    MAP_REMOTES,
];

pub const PROG_FROM_CONTAINER: &str = "from_container";
pub const PROG_TO_CONTAINER: &str = "to_container";
pub const PROG_UPLINK_INGRESS: &str = "uplink_ingress";
pub const PROG_UPLINK_EGRESS: &str = "uplink_egress";
pub const PROG_TUNNEL_INGRESS: &str = "tunnel_ingress";
/// The VXLAN device of a cluster member, where `tunnel_ingress` runs.
pub const VXLAN_DEVICE: &str = "ferry_vxlan";
pub const PROG_XDP_PREFILTER: &str = "xdp_prefilter";
pub const PROG_LOCAL_INGRESS: &str = "local_ingress";
/// Where `local_ingress` goes: ferryd's own namespace's loopback.
pub const LOOPBACK: &str = "lo";
/// The cgroup socket hooks, attached to the configured cgroup2 directory.
pub const SOCK_PROGRAMS: [&str; 4] = [
    "sock_connect4",
    "sock_sendmsg4",
    "sock_recvmsg4",
    "sock_peername4",
];
pub const PROGRAMS: [&str; 11] = [
    PROG_FROM_CONTAINER,
    PROG_TO_CONTAINER,
    PROG_UPLINK_INGRESS,
    PROG_UPLINK_EGRESS,
    PROG_TUNNEL_INGRESS,
    PROG_XDP_PREFILTER,
    PROG_LOCAL_INGRESS,
    SOCK_PROGRAMS[0],
    SOCK_PROGRAMS[1],
    SOCK_PROGRAMS[2],
    SOCK_PROGRAMS[3],
];

const BPF_NOEXIST: u64 = 1;

/// Where ferry's filters sit in the clsact hooks, fixed so a restarted ferryd
/// replaces its own filter in place rather than adding a second one.
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot create pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot pin {what} at {path}: {reason}")]
    Pin {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot attach {program} to {ifname}: {source}")]
    Attach {
        program: &'static str,
        ifname: String,
        #[source]
        source: ProgramError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("cannot count CPUs: {0}")]
    Cpus(String),
    /// An insert the kernel refused for lack of room (E2BIG).
    #[error("the {map} map is full ({capacity} entries)")]
    Full { map: &'static str, capacity: u32 },
}

/// What the datapath's per-container entries may belong to (see
/// [`Datapath::prune`]).
#[derive(Debug, Default)]
pub struct Live {
    pub ips: Vec<Ipv4Addr>,
    pub ports: Vec<PortKey>,
    pub netns: Vec<u64>,
    /// `net_id`s of the user-defined networks.
    pub networks: Vec<u32>,
}

/// Capacities of the maps that grow with use, in entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Assured conntrack flows (two entries per flow); never evicted, when
    /// full new flows stay in `ct_new`.
    pub ct: u32,
    /// Conntrack flows not yet assured; an LRU map that evicts when full.
    pub ct_new: u32,
    /// Containers on the datapath (`endpoints` and their counters).
    pub endpoints: u32,
    /// Published host ports (`portmap` and their counters).
    pub ports: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            ct: MAX_CT,
            ct_new: MAX_CT_NEW,
            endpoints: MAX_ENDPOINTS,
            ports: MAX_PORTMAPS,
        }
    }
}

/// A loaded datapath. Dropping it keeps every pin and attachment.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// Attachments made by this process, kept but never detached on drop.
    links: HashMap<(String, &'static str), ManuallyDrop<SchedClassifierLink>>,
    /// Interfaces with `xdp_prefilter`, and the socket hooks' cgroup.
    xdp: Vec<String>,
    cgroup: Option<PathBuf>,
}

/// One program attachment: where, what, and which hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// An interface name, or a cgroup directory for the socket hooks.
    pub target: String,
    pub program: &'static str,
    pub hook: &'static str,
}

/// How full a map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFill {
    pub name: &'static str,
    pub kind: String,
    /// Keys present; for arrays (always full) the capacity.
    pub entries: usize,
    pub capacity: u32,
}

impl Datapath {
    /// Loads the programs with the default map sizes; see [`Self::load_sized`].
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::load_sized(pin_dir, MapSizes::default())
    }

    /// Loads the programs, reusing maps already pinned in `pin_dir` (so a
    /// restarted ferryd keeps entries and counters) and pinning everything.
    /// New maps get `sizes`; pinned ones keep the capacity they were made
    /// with until `ferryd reset`.
    pub fn load_sized(pin_dir: &Path, sizes: MapSizes) -> Result<Self, DatapathError> {
        let progs_dir = pin_dir.join("progs");
        std::fs::create_dir_all(&progs_dir).map_err(|source| DatapathError::PinDir {
            path: progs_dir.clone(),
            source,
        })?;
        remove_stale_pins(pin_dir);
        remove_changed_maps(pin_dir)?;
        let map_paths: Vec<(&str, PathBuf)> = MAPS
            .iter()
            .map(|name| (*name, pin_dir.join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_CT, sizes.ct);
        loader.map_max_entries(MAP_CT_NEW, sizes.ct_new);
        loader.map_max_entries(MAP_ENDPOINTS, sizes.endpoints);
        loader.map_max_entries(MAP_EP_STATS, sizes.endpoints);
        loader.map_max_entries(MAP_PORTMAP, sizes.ports);
        loader.map_max_entries(MAP_PORT_STATS, sizes.ports);
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        for name in PROGRAMS {
            let program = ebpf.program_mut(name).ok_or(DatapathError::Program {
                name,
                source: ProgramError::UnexpectedProgramType,
            })?;
            let loaded = match program {
                Program::SchedClassifier(p) => p.load(),
                Program::CgroupSockAddr(p) => p.load(),
                Program::Xdp(p) => p.load(),
                _ => Err(ProgramError::UnexpectedProgramType),
            };
            loaded.map_err(|source| DatapathError::Program { name, source })?;
            let prog = ebpf.program_mut(name).ok_or(DatapathError::Program {
                name,
                source: ProgramError::UnexpectedProgramType,
            })?;
            let path = progs_dir.join(name);
            // A pin from an earlier ferryd points at the old program: the new
            // one takes its place (attached filters are swapped in `attach`).
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(DatapathError::Pin {
                        what: name,
                        path,
                        reason: e.to_string(),
                    });
                }
                _ => {}
            }
            prog.pin(&path).map_err(|e| DatapathError::Pin {
                what: name,
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        info!(pin_dir = %pin_dir.display(), "datapath loaded");
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            links: HashMap::new(),
            xdp: Vec::new(),
            cgroup: None,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches `from_container` (ingress) and `to_container` (egress) to a
    /// container's host-side veth, replacing ferry's filters if an earlier
    /// ferryd left them there.
    pub fn attach(&mut self, ifname: &str) -> Result<(), DatapathError> {
        self.attach_programs(
            ifname,
            &[
                (PROG_FROM_CONTAINER, TcAttachType::Ingress),
                (PROG_TO_CONTAINER, TcAttachType::Egress),
            ],
        )
    }

    /// Attaches `tunnel_ingress` to the VXLAN device `ifname` (tc ingress),
    /// replacing an earlier ferryd's.
    pub fn attach_tunnel(&mut self, ifname: &str) -> Result<(), DatapathError> {
        self.attach_programs(ifname, &[(PROG_TUNNEL_INGRESS, TcAttachType::Ingress)])
    }

    /// Attaches `uplink_ingress` (tc ingress) and `xdp_prefilter` to an
    /// uplink, replacing an earlier ferryd's. The XDP link is pinned under
    /// `<pin>/links/xdp-<ifname>`; the kernel picks native XDP where the
    /// driver has it.
    pub fn attach_uplink(&mut self, ifname: &str, xdp: bool) -> Result<(), DatapathError> {
        self.attach_programs(ifname, &[(PROG_UPLINK_INGRESS, TcAttachType::Ingress)])?;
        let pin = self.links_dir()?.join(format!("xdp-{ifname}"));
        if !xdp {
            // Unpinning an earlier ferryd's XDP link detaches it.
            match std::fs::remove_file(&pin) {
                Ok(()) => info!(ifname, "XDP prefilter detached"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(DatapathError::PinDir { path: pin, source });
                }
            }
            self.xdp.retain(|i| i != ifname);
            return Ok(());
        }
        self.attach_link(PROG_XDP_PREFILTER, &pin, |program| {
            let prog: &mut Xdp = program
                .try_into()
                .map_err(|e: ProgramError| e.to_string())?;
            let id = prog
                .attach(ifname, XdpMode::Default)
                .map_err(|e| error_chain(&e))?;
            let link = prog.take_link(id).map_err(|e| e.to_string())?;
            FdLink::try_from(link).map_err(|e| e.to_string())
        })?;
        if !self.xdp.iter().any(|i| i == ifname) {
            self.xdp.push(ifname.to_owned());
        }
        Ok(())
    }

    /// Makes uplink `ifname` (`ifindex`, its own MAC `mac`, its address
    /// `addr`) a macvlan parent: `uplink_egress` on its egress, which
    /// checks and translates what its macvlan containers send. Its ingress
    /// has `uplink_ingress` already (every uplink has).
    pub fn attach_macvlan_parent(
        &mut self,
        ifname: &str,
        ifindex: u32,
        mac: [u8; 6],
        addr: Option<Ipv4Addr>,
    ) -> Result<(), DatapathError> {
        self.set_macvlan_parent(ifindex, mac, addr)?;
        self.attach_programs(ifname, &[(PROG_UPLINK_EGRESS, TcAttachType::Egress)])
    }

    /// Undoes `attach_macvlan_parent`: the uplink's egress is the host's
    /// alone again.
    pub fn detach_macvlan_parent(
        &mut self,
        ifname: &str,
        ifindex: u32,
    ) -> Result<(), DatapathError> {
        self.remove_macvlan_parent(ifindex)?;
        if let Some(link) = self.links.remove(&(ifname.to_owned(), PROG_UPLINK_EGRESS)) {
            ManuallyDrop::into_inner(link)
                .detach()
                .map_err(|source| DatapathError::Attach {
                    program: PROG_UPLINK_EGRESS,
                    ifname: ifname.to_owned(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Attaches program `name` through a BPF link pinned at `pin`: the
    /// pinned link is switched to this program if it exists, else `attach`
    /// makes a new one, which is pinned.
    fn attach_link(
        &mut self,
        name: &'static str,
        pin: &Path,
        attach: impl FnOnce(&mut Program) -> Result<FdLink, String>,
    ) -> Result<(), DatapathError> {
        let fail = |reason: String| DatapathError::Pin {
            what: name,
            path: pin.to_owned(),
            reason,
        };
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| fail("missing program".into()))?;
        let fd = program
            .fd()
            .map_err(|e| fail(e.to_string()))?
            .as_fd()
            .as_raw_fd();
        // SAFETY: the program (held by `self.ebpf`) keeps its fd open for
        // the whole call; the borrow is detached from `program` only so that
        // `attach` may use the program too.
        let prog_fd = unsafe { BorrowedFd::borrow_raw(fd) };
        attach_pinned(pin, prog_fd, || attach(program)).map_err(fail)
    }

    fn links_dir(&self) -> Result<PathBuf, DatapathError> {
        let dir = self.pin_dir.join("links");
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    fn attach_programs(
        &mut self,
        ifname: &str,
        programs: &[(&'static str, TcAttachType)],
    ) -> Result<(), DatapathError> {
        match qdisc_add_clsact(ifname) {
            Err(e) if !is_eexist(&e) => {
                return Err(DatapathError::Attach {
                    program: "clsact qdisc",
                    ifname: ifname.to_owned(),
                    source: ProgramError::from(e),
                });
            }
            _ => {}
        }
        for &(program, hook) in programs {
            let prog = classifier(&mut self.ebpf, program)?;
            let fail = |source| DatapathError::Attach {
                program,
                ifname: ifname.to_owned(),
                source,
            };
            let options = TcAttachOptions::Netlink(NlOptions {
                priority: TC_PRIORITY,
                handle: TC_HANDLE,
                classid: None,
            });
            let id = match prog.attach_with_options(ifname, hook, options) {
                Ok(id) => id,
                Err(err) if is_program_eexist(&err) => {
                    debug!(ifname, program, "replacing an existing filter");
                    let existing =
                        SchedClassifierLink::attached(ifname, hook, TC_PRIORITY, TC_HANDLE, None)
                            .map_err(|e| {
                            fail(ProgramError::from(aya::programs::tc::TcError::IoError(e)))
                        })?;
                    prog.attach_to_link(existing).map_err(fail)?
                }
                Err(err) => return Err(fail(err)),
            };
            let link = prog.take_link(id).map_err(fail)?;
            self.links
                .insert((ifname.to_owned(), program), ManuallyDrop::new(link));
        }
        Ok(())
    }

    /// Attaches `local_ingress` (tc ingress) to the loopback of the current
    /// namespace: published ports for local sockets the socket hooks do
    /// not translate.
    pub fn attach_loopback(&mut self) -> Result<(), DatapathError> {
        self.attach_programs(LOOPBACK, &[(PROG_LOCAL_INGRESS, TcAttachType::Ingress)])
    }

    /// Attaches the socket hooks to a cgroup2 directory (every process below
    /// it), as links pinned under `<pin>/links/`, which keep them attached
    /// when ferryd exits. Links an earlier ferryd pinned are switched to the
    /// new programs in place.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let links_dir = self.links_dir()?;
        let dir = std::fs::File::open(cgroup).map_err(|source| DatapathError::PinDir {
            path: cgroup.to_owned(),
            source,
        })?;
        for name in SOCK_PROGRAMS {
            self.attach_link(name, &links_dir.join(name), |program| {
                let prog: &mut CgroupSockAddr = program
                    .try_into()
                    .map_err(|e: ProgramError| e.to_string())?;
                // A cgroup *link* coexists with other programs on the cgroup
                // whatever the mode; the kernel rejects BPF_F_ALLOW_MULTI
                // for links.
                let id = prog
                    .attach(&dir, CgroupAttachMode::Single)
                    .map_err(|e| error_chain(&e))?;
                let link = prog.take_link(id).map_err(|e| e.to_string())?;
                FdLink::try_from(link).map_err(|e| e.to_string())
            })?;
        }
        self.cgroup = Some(cgroup.to_owned());
        Ok(())
    }

    /// Every attachment this ferryd made or took over, sorted by target.
    pub fn attachments(&self) -> Vec<Attachment> {
        let mut out: Vec<Attachment> = self
            .links
            .keys()
            .map(|(ifname, program)| Attachment {
                target: ifname.clone(),
                program,
                hook: if *program == PROG_TO_CONTAINER || *program == PROG_UPLINK_EGRESS {
                    "tc egress"
                } else {
                    "tc ingress"
                },
            })
            .chain(self.xdp.iter().map(|ifname| Attachment {
                target: ifname.clone(),
                program: PROG_XDP_PREFILTER,
                hook: "xdp",
            }))
            .chain(self.cgroup.iter().flat_map(|cgroup| {
                let target = cgroup.display().to_string();
                SOCK_PROGRAMS.iter().map(move |program| Attachment {
                    target: target.clone(),
                    program,
                    hook: "cgroup",
                })
            }))
            .collect();
        out.sort_by(|a, b| (&a.target, a.program).cmp(&(&b.target, b.program)));
        out
    }

    /// Entries against capacity for every map, from the pinned maps.
    pub fn map_fill(&self) -> Result<Vec<MapFill>, DatapathError> {
        MAPS.iter()
            .map(|&name| {
                let info =
                    aya::maps::MapInfo::from_pin(self.pin_dir.join(name)).map_err(map_err(name))?;
                let kind = info.map_type().map_err(map_err(name))?;
                let capacity = info.max_entries();
                let entries = match kind {
                    aya::maps::MapType::Array | aya::maps::MapType::PerCpuArray => {
                        capacity as usize
                    }
                    // Socket storage lives on the sockets: no keys to walk
                    // and no capacity (it goes with each socket).
                    aya::maps::MapType::SkStorage => 0,
                    _ => {
                        let fd = info.fd().map_err(map_err(name))?;
                        count_keys(fd.as_fd(), info.key_size(), capacity).map_err(|e| {
                            DatapathError::Map {
                                map: name,
                                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                                    call: "bpf_map_get_next_key",
                                    io_error: e,
                                }),
                            }
                        })?
                    }
                };
                Ok(MapFill {
                    name,
                    kind: format!("{kind:?}"),
                    entries,
                    capacity,
                })
            })
            .collect()
    }

    /// The reader of the programs' aya-log ring buffer; the daemon takes it
    /// once and drains it (see `ferry debug datapath`).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                tracing::warn!(%e, "datapath logging unavailable");
                None
            }
        }
    }

    /// Switches the programs' debug logging, at once and without a reload.
    pub fn set_debug_log(&mut self, on: bool) -> Result<(), DatapathError> {
        let mut map: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(self.map(MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
        let flags = map.get(&CONFIG_FLAGS, 0).map_err(map_err(MAP_CONFIG))?;
        let flags = if on {
            flags | CONFIG_DEBUG_LOG
        } else {
            flags & !CONFIG_DEBUG_LOG
        };
        map.set(CONFIG_FLAGS, flags, 0).map_err(map_err(MAP_CONFIG))
    }

    /// Conntrack entries created by the datapath and removed by ferryd.
    pub fn ct_counts(&mut self) -> Result<crate::conntrack::CtCounts, DatapathError> {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map(MAP_CT_STATS)?).map_err(map_err(MAP_CT_STATS))?;
        Ok(crate::conntrack::counts(&stats))
    }

    /// Whether the programs' debug logging is on.
    pub fn debug_log(&mut self) -> Result<bool, DatapathError> {
        let map: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(self.map(MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
        let flags = map.get(&CONFIG_FLAGS, 0).map_err(map_err(MAP_CONFIG))?;
        Ok(flags & CONFIG_DEBUG_LOG != 0)
    }

    /// Forgets the attachments of an interface that is being deleted (the
    /// kernel removes the filters with the interface).
    pub fn forget(&mut self, ifname: &str) {
        self.links.retain(|(name, _), _| name != ifname);
    }

    fn map(&mut self, name: &'static str) -> Result<&mut Map, DatapathError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    let missing = || DatapathError::Program {
        name,
        source: ProgramError::UnexpectedProgramType,
    };
    ebpf.program_mut(name)
        .ok_or_else(missing)?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Points the link pinned at `pin` at `prog`, or when there is none (or it
/// is stale: its interface is gone, ENOLINK) attaches afresh with `attach`
/// and pins the new link.
fn attach_pinned(
    pin: &Path,
    prog: BorrowedFd<'_>,
    attach: impl FnOnce() -> Result<FdLink, String>,
) -> Result<(), String> {
    if pin.exists() {
        match update_pinned_link(pin, prog) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {
                std::fs::remove_file(pin).map_err(|e| format!("removing stale pin: {e}"))?;
            }
            Err(e) => return Err(format!("updating pinned link: {e}")),
        }
    }
    attach()?.pin(pin).map(|_| ()).map_err(|e| e.to_string())
}

/// An error with its sources, for messages that must say what failed.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

fn is_eexist(e: &aya::programs::tc::TcError) -> bool {
    match e {
        aya::programs::tc::TcError::NetlinkError(e) => e.raw_os_error() == Some(libc::EEXIST),
        aya::programs::tc::TcError::IoError(e) => e.raw_os_error() == Some(libc::EEXIST),
        _ => false,
    }
}

fn is_program_eexist(e: &ProgramError) -> bool {
    matches!(e, ProgramError::TcError(tc) if is_eexist(tc))
}
