//! The eBPF datapath: loads the embedded object, pins maps and programs
//! under the pin directory (default /sys/fs/bpf/ferry), attaches the
//! programs to container veths and writes the maps.
//!
//! Pins (one line each in docs/datapath.md):
//! - `<pin>/endpoints`, `<pin>/ep_stats`, `<pin>/drops`: the maps, reused by
//!   a restarted ferryd so counters and entries survive it;
//! - `<pin>/portmap`, `<pin>/host_addrs`, `<pin>/ct`: published ports, the
//!   host's addresses, connection tracking;
//! - `<pin>/sock_netns`, `<pin>/sock_peer`, `<pin>/sock_revnat`: namespaces
//!   the socket hooks serve, and what translated sockets asked for
//!   (connected ones on the socket itself, unconnected UDP by destination);
//! - `<pin>/progs/<program>`: the programs;
//! - `<pin>/links/sock_*`: the cgroup links of the socket hooks.
//!
//! Attachments (container veths and uplinks) are netlink cls_bpf filters (`tc filter show`, `bpftool net
//! show` list them by program name). They belong to the interface, not to
//! ferryd: they stay when ferryd exits and go when the veth is deleted.

use std::{
    collections::HashMap,
    io,
    mem::ManuallyDrop,
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, Map, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        CgroupAttachMode, CgroupSockAddr, Program, ProgramError, SchedClassifier, TcAttachType,
        TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::FdLink,
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle, qdisc_add_clsact},
    },
    util::nr_cpus,
};
use ferry_common::{
    CONFIG_DEBUG_LOG, CONFIG_FLAGS, DropReason, Endpoint, EndpointStats, Ipv4Key, MAX_CT,
    MAX_CT_NEW, MAX_ENDPOINTS, MAX_PORTMAPS, NetPolicy, PortKey, PortTarget,
};
use tracing::{debug, info};

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
const MAPS: [&str; 15] = [
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
];

pub const PROG_FROM_CONTAINER: &str = "from_container";
pub const PROG_TO_CONTAINER: &str = "to_container";
pub const PROG_UPLINK_INGRESS: &str = "uplink_ingress";
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
pub const PROGRAMS: [&str; 9] = [
    PROG_FROM_CONTAINER,
    PROG_TO_CONTAINER,
    PROG_UPLINK_INGRESS,
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
                hook: if *program == PROG_TO_CONTAINER {
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

    /// Lets the socket hooks act in the namespace with this cookie.
    pub fn add_netns(&mut self, cookie: u64, kind: u32) -> Result<(), DatapathError> {
        let mut map: BpfHashMap<_, u64, u32> =
            BpfHashMap::try_from(self.map(MAP_SOCK_NETNS)?).map_err(map_err(MAP_SOCK_NETNS))?;
        map.insert(cookie, kind, 0).map_err(map_err(MAP_SOCK_NETNS))
    }

    /// Sets a user-defined network's policy (`NET_*` bits).
    pub fn set_network(&mut self, net_id: u32, flags: u32) -> Result<(), DatapathError> {
        let mut map: BpfHashMap<_, u32, NetPolicy> =
            BpfHashMap::try_from(self.map(MAP_NETWORKS)?).map_err(map_err(MAP_NETWORKS))?;
        let inserted = map.insert(net_id, NetPolicy { flags }, 0);
        inserted.map_err(|e| self.insert_error(MAP_NETWORKS, e))
    }

    /// Forgets a network's policy. Missing is fine.
    pub fn remove_network(&mut self, net_id: u32) -> Result<(), DatapathError> {
        let mut map: BpfHashMap<_, u32, NetPolicy> =
            BpfHashMap::try_from(self.map(MAP_NETWORKS)?).map_err(map_err(MAP_NETWORKS))?;
        ignore_missing(map.remove(&net_id)).map_err(map_err(MAP_NETWORKS))
    }

    /// Stops the socket hooks acting in that namespace. Missing is fine.
    pub fn remove_netns(&mut self, cookie: u64) -> Result<(), DatapathError> {
        let mut map: BpfHashMap<_, u64, u32> =
            BpfHashMap::try_from(self.map(MAP_SOCK_NETNS)?).map_err(map_err(MAP_SOCK_NETNS))?;
        ignore_missing(map.remove(&cookie)).map_err(map_err(MAP_SOCK_NETNS))
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

    /// Publishes a container to the datapath. A new one gets the lowest
    /// free counter slot (`Endpoint::stats`, whatever the caller set),
    /// zeroed; one already there (adoption) keeps its slot and counters.
    /// A full map is [`DatapathError::Full`], with nothing left behind.
    pub fn add_endpoint(
        &mut self,
        ip: Ipv4Addr,
        mut endpoint: Endpoint,
    ) -> Result<(), DatapathError> {
        let key = Ipv4Key { ip: ip.octets() };
        let capacity = self.ep_stats_len()?;
        endpoint.stats = match self.endpoint(&key)? {
            Some(present) => present.stats,
            None => {
                let endpoints: BpfHashMap<_, Ipv4Key, Endpoint> =
                    BpfHashMap::try_from(self.map(MAP_ENDPOINTS)?)
                        .map_err(map_err(MAP_ENDPOINTS))?;
                // Slots in use are read off the endpoints themselves, so
                // there is no second record to drift from the map (a few
                // hundred lookups at most on a busy host).
                let used: std::collections::HashSet<u32> = endpoints
                    .iter()
                    .filter_map(Result::ok)
                    .map(|(_, e)| e.stats)
                    .collect();
                let free = (0..capacity).find(|s| !used.contains(s));
                let Some(free) = free else {
                    return Err(DatapathError::Full {
                        map: MAP_ENDPOINTS,
                        capacity,
                    });
                };
                self.zero_ep_stats(free)?;
                free
            }
        };
        let mut endpoints: BpfHashMap<_, Ipv4Key, Endpoint> =
            BpfHashMap::try_from(self.map(MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?;
        endpoints
            .insert(key, endpoint, 0)
            .map_err(|e| self.insert_error(MAP_ENDPOINTS, e))
    }

    /// The endpoint at `key`, if any.
    fn endpoint(&mut self, key: &Ipv4Key) -> Result<Option<Endpoint>, DatapathError> {
        let endpoints: BpfHashMap<_, Ipv4Key, Endpoint> =
            BpfHashMap::try_from(self.map(MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?;
        match endpoints.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map {
                map: MAP_ENDPOINTS,
                source,
            }),
        }
    }

    /// Slots in `ep_stats` (its capacity, which a pinned map keeps).
    fn ep_stats_len(&mut self) -> Result<u32, DatapathError> {
        let stats: PerCpuArray<_, EndpointStats> =
            PerCpuArray::try_from(self.map(MAP_EP_STATS)?).map_err(map_err(MAP_EP_STATS))?;
        Ok(stats.len())
    }

    fn zero_ep_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        let zeros = zeroed_counters()?;
        let mut stats: PerCpuArray<_, EndpointStats> =
            PerCpuArray::try_from(self.map(MAP_EP_STATS)?).map_err(map_err(MAP_EP_STATS))?;
        stats.set(slot, zeros, 0).map_err(map_err(MAP_EP_STATS))
    }

    /// What a failed insert into `name` means: the map is full, or the
    /// kernel's error.
    fn insert_error(&self, name: &'static str, e: aya::maps::MapError) -> DatapathError {
        match &e {
            aya::maps::MapError::SyscallError(s)
                if s.io_error.raw_os_error() == Some(libc::E2BIG) =>
            {
                let capacity = aya::maps::MapInfo::from_pin(self.pin_dir.join(name))
                    .map_or(0, |info| info.max_entries());
                DatapathError::Full {
                    map: name,
                    capacity,
                }
            }
            _ => DatapathError::Map {
                map: name,
                source: e,
            },
        }
    }

    /// Removes a container from the datapath (its counter slot is free
    /// again, zeroed when next given out). Missing is fine.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), DatapathError> {
        let key = Ipv4Key { ip: ip.octets() };
        let mut endpoints: BpfHashMap<_, Ipv4Key, Endpoint> =
            BpfHashMap::try_from(self.map(MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?;
        ignore_missing(endpoints.remove(&key)).map_err(map_err(MAP_ENDPOINTS))
    }

    /// A container's counters, summed over CPUs (zero for an unknown one).
    pub fn endpoint_stats(&mut self, ip: Ipv4Addr) -> Result<EndpointStats, DatapathError> {
        let Some(endpoint) = self.endpoint(&Ipv4Key { ip: ip.octets() })? else {
            return Ok(EndpointStats::default());
        };
        let stats: PerCpuArray<_, EndpointStats> =
            PerCpuArray::try_from(self.map(MAP_EP_STATS)?).map_err(map_err(MAP_EP_STATS))?;
        let values = stats
            .get(&endpoint.stats, 0)
            .map_err(map_err(MAP_EP_STATS))?;
        Ok(summed(&values))
    }

    /// Drop counters by reason, summed over CPUs.
    pub fn drops(&mut self) -> Result<Vec<(DropReason, u64)>, DatapathError> {
        let drops: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map(MAP_DROPS)?).map_err(map_err(MAP_DROPS))?;
        DropReason::ALL
            .iter()
            .map(|reason| {
                let values = drops
                    .get(&(*reason as u32), 0)
                    .map_err(map_err(MAP_DROPS))?;
                Ok((*reason, values.iter().sum()))
            })
            .collect()
    }

    /// Runs `program` once on `frame` with BPF_PROG_TEST_RUN (no interface
    /// involved; the skb's ifindex is the loopback's, 1). Returns the verdict
    /// and the frame as the program left it.
    pub fn test_run(
        &mut self,
        program: &'static str,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), DatapathError> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let result = match self.ebpf.program_mut(program) {
            Some(Program::SchedClassifier(p)) => p.test_run(opts),
            Some(Program::Xdp(p)) => p.test_run(opts),
            _ => Err(ProgramError::UnexpectedProgramType),
        }
        .map_err(|source| DatapathError::Program {
            name: program,
            source,
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Makes a zeroed per-CPU counter entry for `key` in the stats map
    /// `name`, keeping one that exists (adoption keeps its counters).
    fn add_stats<K: aya::Pod>(&mut self, name: &'static str, key: K) -> Result<(), DatapathError> {
        let zeros = zeroed_counters()?;
        let mut stats: PerCpuHashMap<_, K, EndpointStats> =
            PerCpuHashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        match stats.insert(key, zeros, BPF_NOEXIST) {
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Err(e) => Err(self.insert_error(name, e)),
            Ok(()) => Ok(()),
        }
    }

    /// Counters of `key` in the stats map `name`, summed over CPUs.
    fn read_stats<K: aya::Pod>(
        &mut self,
        name: &'static str,
        key: &K,
    ) -> Result<EndpointStats, DatapathError> {
        let stats: PerCpuHashMap<_, K, EndpointStats> =
            PerCpuHashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        match stats.get(key, 0) {
            Ok(values) => Ok(summed(&values)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(EndpointStats::default()),
            Err(source) => Err(DatapathError::Map { map: name, source }),
        }
    }

    /// Traffic of a published port through the uplink (rx: to the
    /// container, tx: its replies).
    pub fn port_stats(&mut self, key: &PortKey) -> Result<EndpointStats, DatapathError> {
        self.read_stats(MAP_PORT_STATS, key)
    }

    /// Publishes a host port: packets for it are DNAT'ed to `target`. A
    /// full map is [`DatapathError::Full`], with nothing left behind.
    pub fn add_port(&mut self, key: PortKey, target: PortTarget) -> Result<(), DatapathError> {
        let mut ports: BpfHashMap<_, PortKey, PortTarget> =
            BpfHashMap::try_from(self.map(MAP_PORTMAP)?).map_err(map_err(MAP_PORTMAP))?;
        let inserted = ports.insert(key, target, 0);
        // Counters second, as in `add_endpoint`.
        let added = match inserted {
            Ok(()) => self.add_stats(MAP_PORT_STATS, key),
            Err(e) => Err(self.insert_error(MAP_PORTMAP, e)),
        };
        if added.is_err() {
            let _ = self.remove_port(&key);
        }
        added
    }

    /// Unpublishes a host port. Missing is fine.
    pub fn remove_port(&mut self, key: &PortKey) -> Result<(), DatapathError> {
        let mut ports: BpfHashMap<_, PortKey, PortTarget> =
            BpfHashMap::try_from(self.map(MAP_PORTMAP)?).map_err(map_err(MAP_PORTMAP))?;
        ignore_missing(ports.remove(key)).map_err(map_err(MAP_PORTMAP))?;
        let mut stats: PerCpuHashMap<_, PortKey, EndpointStats> =
            PerCpuHashMap::try_from(self.map(MAP_PORT_STATS)?).map_err(map_err(MAP_PORT_STATS))?;
        ignore_missing(stats.remove(key)).map_err(map_err(MAP_PORT_STATS))
    }

    /// Makes `host_addrs` hold exactly `addrs`.
    pub fn set_host_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<(), DatapathError> {
        let mut map: BpfHashMap<_, Ipv4Key, u32> =
            BpfHashMap::try_from(self.map(MAP_HOST_ADDRS)?).map_err(map_err(MAP_HOST_ADDRS))?;
        let wanted: Vec<Ipv4Key> = addrs.iter().map(|a| Ipv4Key { ip: a.octets() }).collect();
        let stale: Vec<Ipv4Key> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            ignore_missing(map.remove(&key)).map_err(map_err(MAP_HOST_ADDRS))?;
        }
        for key in wanted {
            map.insert(key, 1, 0).map_err(map_err(MAP_HOST_ADDRS))?;
        }
        Ok(())
    }

    /// Removes the entries that belong to nothing alive: endpoints for
    /// addresses not in `live.ips`, published ports and
    /// their counters not in `live.ports`, socket-hook namespaces not in
    /// `live.netns`. What a crash between two steps of a run or a removal
    /// leaves; returns a line for each entry removed.
    pub fn prune(&mut self, live: &Live) -> Result<Vec<String>, DatapathError> {
        let mut removed = Vec::new();
        let endpoints: BpfHashMap<_, Ipv4Key, Endpoint> =
            BpfHashMap::try_from(self.map(MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?;
        let ips: Vec<Ipv4Key> = endpoints.keys().filter_map(Result::ok).collect();
        for key in ips {
            let ip = Ipv4Addr::from(key.ip);
            if !live.ips.contains(&ip) {
                self.remove_endpoint(ip)?;
                removed.push(format!("endpoint {ip}"));
            }
        }
        let ports: BpfHashMap<_, PortKey, PortTarget> =
            BpfHashMap::try_from(self.map(MAP_PORTMAP)?).map_err(map_err(MAP_PORTMAP))?;
        let mut keys: Vec<PortKey> = ports.keys().filter_map(Result::ok).collect();
        let port_stats: PerCpuHashMap<_, PortKey, EndpointStats> =
            PerCpuHashMap::try_from(self.map(MAP_PORT_STATS)?).map_err(map_err(MAP_PORT_STATS))?;
        keys.extend(port_stats.keys().filter_map(Result::ok));
        keys.sort_by_key(|k| (k.ip, k.port, k.proto));
        keys.dedup();
        for key in keys {
            if !live.ports.contains(&key) {
                self.remove_port(&key)?;
                removed.push(format!(
                    "published port {}:{}/{}",
                    Ipv4Addr::from(key.ip),
                    u16::from_be_bytes(key.port),
                    key.proto
                ));
            }
        }
        let policies: BpfHashMap<_, u32, NetPolicy> =
            BpfHashMap::try_from(self.map(MAP_NETWORKS)?).map_err(map_err(MAP_NETWORKS))?;
        let net_ids: Vec<u32> = policies.keys().filter_map(Result::ok).collect();
        for net_id in net_ids {
            if !live.networks.contains(&net_id) {
                self.remove_network(net_id)?;
                removed.push(format!("network policy {net_id}"));
            }
        }
        let netns: BpfHashMap<_, u64, u32> =
            BpfHashMap::try_from(self.map(MAP_SOCK_NETNS)?).map_err(map_err(MAP_SOCK_NETNS))?;
        let cookies: Vec<u64> = netns.keys().filter_map(Result::ok).collect();
        for cookie in cookies {
            if !live.netns.contains(&cookie) {
                self.remove_netns(cookie)?;
                removed.push(format!("socket-hook namespace {cookie}"));
            }
        }
        Ok(removed)
    }

    /// Number of endpoints in the map.
    pub fn endpoint_count(&mut self) -> Result<usize, DatapathError> {
        let endpoints: BpfHashMap<_, Ipv4Key, Endpoint> =
            BpfHashMap::try_from(self.map(MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?;
        Ok(endpoints.keys().filter(Result::is_ok).count())
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

/// `bpf(2)` with a command and its attribute struct.
fn bpf_cmd<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised struct of the size passed, laid
    // out as the kernel's `union bpf_attr` member for `cmd`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Removes pins an earlier ferry left under names this one no longer uses:
/// maps, programs and socket-hook links (a stale link pin would keep its
/// old program attached next to the new one).
fn remove_stale_pins(pin_dir: &Path) {
    let stale = |dir: &str, keep: &dyn Fn(&str) -> bool| {
        let Ok(entries) = std::fs::read_dir(pin_dir.join(dir)) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep(&name) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => info!(pin = %entry.path().display(), "removed a stale pin"),
                Err(e) => {
                    tracing::warn!(pin = %entry.path().display(), %e, "cannot remove a stale pin")
                }
            }
        }
    };
    stale("", &|name| {
        MAPS.contains(&name) || name == "progs" || name == "links"
    });
    stale("progs", &|name| PROGRAMS.contains(&name));
    stale("links", &|name| {
        !name.starts_with("sock_") || SOCK_PROGRAMS.contains(&name)
    });
}

/// Zeroed counters, one per possible CPU (as per-CPU map writes take).
fn zeroed_counters() -> Result<PerCpuValues<EndpointStats>, DatapathError> {
    let cpus = nr_cpus().map_err(|(what, e)| DatapathError::Cpus(format!("{what}: {e}")))?;
    PerCpuValues::try_from(vec![EndpointStats::default(); cpus])
        .map_err(|e| DatapathError::Cpus(e.to_string()))
}

/// Per-CPU counters summed.
fn summed(values: &PerCpuValues<EndpointStats>) -> EndpointStats {
    values
        .iter()
        .fold(EndpointStats::default(), |acc, v| acc.merged(*v))
}

/// Removes the pins of maps whose layout (type, key or value size, flags,
/// an array's length) differs from this build's definition, so that they
/// are made anew: the loader would otherwise reuse an old map as it is,
/// and the programs would read its values with the new layout. What such a map held is
/// lost (ferryd puts its endpoints and ports back as it adopts the
/// containers; counters restart, tracked flows are forgotten); each one is
/// logged. A hash map's capacity is not layout: a pinned one keeps its own.
fn remove_changed_maps(pin_dir: &Path) -> Result<(), DatapathError> {
    let object = aya_obj::Object::parse(OBJECT)
        .map_err(|e| DatapathError::Load(Box::new(aya::EbpfError::ParseError(e))))?;
    for name in MAPS {
        let path = pin_dir.join(name);
        let Ok(pinned) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        let Some(wanted) = object.maps.get(name) else {
            continue;
        };
        // An array's capacity is its layout: its indexes are fixed slots.
        let is_array = |t: u32| {
            t == aya::maps::MapType::Array as u32 || t == aya::maps::MapType::PerCpuArray as u32
        };
        let pinned_type = pinned.map_type().ok().map(|t| t as u32);
        let pinned_layout = (
            pinned_type,
            pinned.key_size(),
            pinned.value_size(),
            pinned.map_flags(),
            pinned_type
                .is_some_and(is_array)
                .then(|| pinned.max_entries()),
        );
        let wanted_layout = (
            Some(wanted.map_type()),
            wanted.key_size(),
            wanted.value_size(),
            wanted.map_flags(),
            is_array(wanted.map_type()).then(|| wanted.max_entries()),
        );
        if pinned_layout == wanted_layout {
            continue;
        }
        tracing::warn!(
            map = name,
            pinned = ?pinned_layout,
            wanted = ?wanted_layout,
            "a pinned map has another layout (type, key size, value size, flags, array \
             length) than this build's: made anew, its entries are lost"
        );
        std::fs::remove_file(&path).map_err(|e| DatapathError::Pin {
            what: name,
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Counts a map's keys with BPF_MAP_GET_NEXT_KEY (at most `capacity` + 1
/// steps, however the map changes meanwhile).
fn count_keys(map: BorrowedFd<'_>, key_size: u32, capacity: u32) -> io::Result<usize> {
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    #[repr(C)]
    struct NextKey {
        map_fd: u32,
        pad: u32,
        key: u64,
        next_key: u64,
    }
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut count = 0;
    let mut first = true;
    while count <= capacity as usize {
        let attr = NextKey {
            map_fd: map.as_raw_fd() as u32,
            pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        match bpf_cmd(BPF_MAP_GET_NEXT_KEY, &attr) {
            Ok(_) => {
                count += 1;
                first = false;
                std::mem::swap(&mut key, &mut next);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(count)
}

/// Atomically swaps the program of the BPF link pinned at `pin` for
/// `prog` (BPF_OBJ_GET + BPF_LINK_UPDATE): a restarted ferryd takes over
/// its attachments without a moment where nothing is attached.
fn update_pinned_link(pin: &Path, prog: BorrowedFd<'_>) -> io::Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_UPDATE: libc::c_long = 29;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fd = bpf_cmd(
        BPF_OBJ_GET,
        &ObjGet {
            pathname: path.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
        },
    )?;
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    bpf_cmd(
        BPF_LINK_UPDATE,
        &LinkUpdate {
            link_fd: link.as_raw_fd() as u32,
            new_prog_fd: prog.as_raw_fd() as u32,
            flags: 0,
            old_prog_fd: 0,
        },
    )
    .map(|_| ())
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

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
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
