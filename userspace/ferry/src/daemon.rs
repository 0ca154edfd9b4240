//! ferryd: owns all state, serialises every change behind one lock, and
//! rolls back partial work when a step fails.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io,
    net::Ipv4Addr,
    os::{fd::AsFd as _, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ferry_common::{
    DropReason, Endpoint, GATEWAY_V4, NETNS_CONTAINER, NETNS_HOST, PortKey, PortTarget,
};
use nix::{
    fcntl::{Flock, FlockArg},
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::UnixListener,
    sync::{Mutex, watch},
};
use tracing::{info, warn};

use crate::{
    api::{
        self, ApiError, AttachmentJson, ConntrackJson, ContainerJson, DatapathJson, ExecRequest,
        MapJson, NetCounters, NetworkConnect, NetworkCreate, NetworkDisconnect, NetworkJson,
        RunRequest, Stats, WaitResponse,
    },
    cgroup::{CgroupError, Cgroups, Usage},
    config::Config,
    conntrack::{Conntrack, Flow, Timeouts},
    container::{self, ExecSpec, ExitRecord, InitSpec, MonitorNet},
    datapath::{self, Datapath},
    dns,
    link::{Mac, Netlink},
    logs::{self, Stream},
    metrics::{self, ApiCounters, Family},
    netns::{self, NetNsGuard},
    network::{NetworkDef, NetworkError, Networks},
    portmap::{self, HostPorts, PortMapping, PublishSpec, Reservation, ReserveError},
    preflight,
    rootfs::{Bind, RootfsSpec},
    state::{ContainerRecord, NetworkRecord, Status, Store, process_start_time},
    validate,
};

/// Host-side veths are this prefix and the first 12 hex digits of the id.
const HOST_VETH_PREFIX: &str = "fy";

/// The static address an endpoint asks for on `network` (`--ip`), checked
/// with its aliases: both are for user-defined networks only, as in Docker.
fn endpoint_address(
    network: &NetworkDef,
    ep: &crate::api::EndpointConfig,
) -> Result<Option<Ipv4Addr>, ApiError> {
    let ip =
        match ep.ipv4_address.as_str() {
            "" => None,
            a => Some(a.parse::<Ipv4Addr>().map_err(|_| {
                ApiError::BadRequest(format!("invalid IPv4 address {a:?} for --ip"))
            })?),
        };
    if network.is_default() && (ip.is_some() || !ep.aliases.is_empty()) {
        return Err(NetworkError::DefaultOnly {
            what: if ip.is_some() {
                "a user-specified IP address"
            } else {
                "a network-scoped alias"
            },
        }
        .into());
    }
    Ok(ip)
}

/// Whether `name` is one of ferry's host-side veths (by its shape: the
/// prefix, 11 hex digits of an id, and a hex digit or a letter g-z).
fn is_host_veth(name: &str) -> bool {
    name.strip_prefix(HOST_VETH_PREFIX).is_some_and(|rest| {
        rest.len() == 12
            && rest[..11].bytes().all(|b| b.is_ascii_hexdigit())
            && rest[11..]
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    })
}

/// Mount points (as /proc/self/mountinfo lists them) below one of `dirs`.
fn mounts_below(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| dirs.iter().any(|d| p.starts_with(d)))
        .collect();
    // Deepest first, so nested mounts go before their parents.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A container's interface on a network: its name inside, its host-side
/// veth, and whether it is the first (default route, socket hooks).
struct Link {
    ifname: String,
    host_ifname: String,
    first: bool,
}

impl Link {
    /// `eth0` and `fy<12 hex of the id>`.
    fn first(id: &str) -> Self {
        Self {
            ifname: "eth0".into(),
            host_ifname: format!("{HOST_VETH_PREFIX}{}", &id[..12]),
            first: true,
        }
    }

    /// The next free `ethN` and `fy<11 hex of the id><g..z>` (never a hex
    /// digit, so never the first link's name) of a container that has
    /// `taken` attachments.
    fn next(id: &str, taken: &[&NetworkRecord]) -> Option<Self> {
        let ifname = (1..)
            .map(|n| format!("eth{n}"))
            .find(|n| taken.iter().all(|t| &t.ifname != n))?;
        let host_ifname = ('g'..='z')
            .map(|c| format!("{HOST_VETH_PREFIX}{}{c}", &id[..11]))
            .find(|n| taken.iter().all(|t| &t.host_ifname != n))?;
        Some(Self {
            ifname,
            host_ifname,
            first: false,
        })
    }
}

pub struct Daemon {
    inner: Mutex<Inner>,
    /// The pinned `ct` map, for listing and flushing (own fd, no lock).
    ct_pin: std::path::PathBuf,
    ct_timeouts: Timeouts,
    api: ApiCounters,
}

struct Inner {
    containers: BTreeMap<String, ContainerRecord>,
    /// Per running container: the exit code once it has exited.
    exits: HashMap<String, watch::Sender<Option<i32>>>,
    cgroups: Cgroups,
    /// Host directories a container must not see (ferry's own state).
    hidden: Vec<PathBuf>,
    /// Networks and their addresses.
    networks: Networks,
    datapath: Datapath,
    store: Store,
    netlink: Netlink,
    /// Host ports held for each running container's publishes.
    reservations: HashMap<String, Vec<Reservation>>,
    /// Names on each user-defined network, for the embedded DNS.
    dns_table: dns::Table,
    /// Each DNS-serving container's server task.
    dns_tasks: HashMap<String, tokio::task::AbortHandle>,
    /// Where names that are not containers' are asked by default.
    dns_upstreams: Vec<std::net::SocketAddr>,
}

/// Everything that must exist before ferryd serves, checked in the order a
/// user would fix them.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    preflight::require_root()?;
    preflight::require_bpf()?;
    preflight::ensure_bpffs(&config.pin_dir)?;
    match preflight::raise_open_files() {
        Ok(limit) => tracing::debug!(limit, "open files"),
        Err(e) => warn!(%e, "cannot raise the open-files limit"),
    }
    // Refuse a served socket before creating anything.
    socket_in_use(&config.socket)?;
    for dir in [&config.state_dir, &config.run_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    let _lock = lock(&config.run_dir)?;
    let listener = bind_socket(&config)?;
    let started = match Daemon::start(&config).await {
        Ok(d) => match config.metrics_addr {
            Some(addr) => metrics::serve(Arc::clone(&d), addr).await.map(|()| d),
            None => Ok(d),
        },
        Err(e) => Err(e),
    };
    let daemon = match started {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(e);
        }
    };
    info!(socket = %config.socket.display(), subnet = %config.subnet, "ferryd ready");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let int = tokio::signal::ctrl_c();
        match term.as_mut() {
            Ok(term) => {
                tokio::select! { _ = term.recv() => {}, _ = int => {} }
            }
            Err(_) => {
                let _ = int.await;
            }
        }
        info!("shutting down; containers and the datapath keep running");
    };
    let served = axum::serve(listener, api::router(daemon))
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = std::fs::remove_file(&config.socket);
    served.map_err(|e| anyhow::anyhow!("API server: {e}"))
}

/// Fails if a live process serves `path`.
fn socket_in_use(path: &Path) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "API socket {} is already in use by another process",
            path.display()
        );
    }
    Ok(())
}

/// One ferryd per run directory.
fn lock(run_dir: &Path) -> anyhow::Result<Flock<File>> {
    let path = run_dir.join("ferryd.lock");
    let file =
        File::create(&path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| anyhow::anyhow!("another ferryd is running (it holds {})", path.display()))
}

/// Binds the API socket (mode 0660), refusing one that a live process serves
/// and replacing a stale file.
fn bind_socket(config: &Config) -> anyhow::Result<UnixListener> {
    let path = &config.socket;
    if path.exists() {
        socket_in_use(path)?;
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind API socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| anyhow::anyhow!("chmod {}: {e}", path.display()))?;
    if let Some(gid) = config.socket_gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| anyhow::anyhow!("chown {}: {e}", path.display()))?;
    }
    Ok(listener)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    // SAFETY: getrandom writes at most `len` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(ApiError::Internal(format!(
            "getrandom: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn macs_for(ip: Ipv4Addr) -> (Mac, Mac) {
    let [a, b, c, d] = ip.octets();
    // Locally administered, derived from the address so they are readable
    // in `ip neigh` and tcpdump: 02:42:<ip> in the container (as Docker),
    // 02:fe:<ip> for its gateway on the host side.
    ([0x02, 0x42, a, b, c, d], [0x02, 0xfe, a, b, c, d])
}

/// Pieces of a container being created, undone in reverse on failure.
#[derive(Default)]
struct Partial {
    ip: Option<Ipv4Addr>,
    monitor_pid: Option<u32>,
    host_ifindex: Option<u32>,
    host_ifname: Option<String>,
    dir: bool,
    cgroup: bool,
    ports: Vec<PortKey>,
    netns_cookie: Option<u64>,
    /// Names registered for the embedded DNS: (network, address).
    dns: Option<(String, Ipv4Addr)>,
}

/// A run request, checked before anything is created.
struct Plan {
    specs: Vec<PublishSpec>,
    binds: Vec<Bind>,
    image: Option<PathBuf>,
    network: NetPlan,
    workdir: PathBuf,
}

/// `--network`.
enum NetPlan {
    /// ferry's datapath, on the default or a user-defined network.
    Bridge {
        network: NetworkDef,
        ip: Option<Ipv4Addr>,
        aliases: Vec<String>,
    },
    /// Only loopback.
    None,
    /// The host's network namespace.
    Host,
    /// The network namespace of another running container.
    Container { pid: u32 },
}

impl Plan {
    /// Validates the request; `inner` resolves `container:<name>`.
    fn of(req: &RunRequest, inner: &Inner) -> Result<Self, ApiError> {
        let bad = |m: String| ApiError::BadRequest(m);
        let validate::RunParts {
            specs,
            binds,
            workdir,
        } = validate::run_request(req)?;
        for b in &binds {
            b.check_source().map_err(|e| bad(e.to_string()))?;
            inner.refuse_own_dirs("volume source", &b.source)?;
        }
        let image = match req.host_config.rootfs.as_str() {
            "" => None,
            dir => {
                let path = Path::new(dir);
                if !path.is_absolute() {
                    return Err(bad(format!("rootfs {dir:?} must be an absolute path")));
                }
                if !path.is_dir() {
                    return Err(bad(format!("rootfs {dir}: no such directory")));
                }
                // The rootfs is used in place: the host's own root would
                // make every write of the container a write to the host.
                if path.canonicalize().is_ok_and(|p| p == Path::new("/")) {
                    return Err(bad(format!(
                        "rootfs {dir} is the host's root: leave --rootfs out for a private \
                         overlay of it"
                    )));
                }
                inner.refuse_own_dirs("rootfs", path)?;
                Some(path.to_owned())
            }
        };
        let mode = req.host_config.network_mode.as_str();
        let network = match mode {
            "none" => NetPlan::None,
            "host" => NetPlan::Host,
            _ => match mode.strip_prefix("container:") {
                Some(reference) => {
                    let target = inner.find(reference)?;
                    match (target.status, target.pid) {
                        (Status::Running, Some(pid)) => NetPlan::Container { pid },
                        _ => {
                            return Err(ApiError::Conflict(format!(
                                "cannot join the network of container {reference}: it is not running"
                            )));
                        }
                    }
                }
                None => {
                    let name = match mode {
                        "" | "default" => crate::network::DEFAULT_NETWORK,
                        name => name,
                    };
                    let network = inner.networks.find(name)?.clone();
                    let ep = &req.endpoint;
                    let ip = endpoint_address(&network, ep)?;
                    if network.internal && !specs.is_empty() {
                        return Err(bad(format!(
                            "conflicting options: port publishing and the internal network {}",
                            network.name
                        )));
                    }
                    NetPlan::Bridge {
                        network,
                        ip,
                        aliases: ep.aliases.clone(),
                    }
                }
            },
        };
        if !specs.is_empty() && !matches!(network, NetPlan::Bridge { .. }) {
            return Err(bad(format!(
                "conflicting options: port publishing and the {mode} network mode"
            )));
        }
        Ok(Self {
            specs,
            binds,
            image,
            network,
            workdir,
        })
    }
}

impl Daemon {
    async fn start(config: &Config) -> anyhow::Result<Arc<Self>> {
        let datapath = Datapath::load_sized(&config.pin_dir, config.map_sizes)?;
        let store = Store::new(&config.state_dir)?;
        let netlink = Netlink::current()?;
        let (records, orphans) = store.load_all()?;
        let cgroups = Cgroups::detect(&config.cgroup_parent, &config.cgroup)?;
        info!(version = cgroups.version(), parent = %config.cgroup_parent, "container cgroups");
        // Their cgroups (and any process left in them) go with the other
        // leftovers in `reconcile`.
        for id in orphans {
            warn!(%id, "removing a container directory without a config (creation was interrupted)");
            store.remove(&id)?;
        }
        let mut inner = Inner {
            containers: BTreeMap::new(),
            exits: HashMap::new(),
            cgroups,
            hidden: vec![config.state_dir.clone(), config.run_dir.clone()],
            networks: Networks::load(&config.state_dir, config.subnet)?,
            datapath,
            store,
            netlink,
            reservations: HashMap::new(),
            dns_table: dns::Table::default(),
            dns_tasks: HashMap::new(),
            dns_upstreams: config.dns_upstreams.clone(),
        };
        for uplink in uplinks(config, &inner.netlink).await? {
            let xdp = config.xdp_prefilter.applies_to(&uplink);
            inner.datapath.attach_uplink(&uplink, xdp)?;
            info!(%uplink, xdp_prefilter = xdp, "published ports served on this uplink");
        }
        inner.datapath.attach_loopback()?;
        netns::loopback_hairpin(true)
            .map_err(|e| anyhow::anyhow!("cannot set up lo for published ports: {e}"))?;
        inner.refresh_host_addrs().await?;
        for def in inner
            .networks
            .list()
            .filter(|d| !d.is_default())
            .cloned()
            .collect::<Vec<_>>()
        {
            inner.datapath.set_network(def.net_id, def.flags())?;
        }
        inner.datapath.attach_cgroup(&config.cgroup)?;
        let host_cookie = netns::current_cookie()?;
        inner.datapath.add_netns(host_cookie, NETNS_HOST)?;
        info!(cgroup = %config.cgroup.display(), "socket hooks attached");
        portmap::reserve_snat_ports(true)
            .map_err(|e| anyhow::anyhow!("cannot reserve the masquerade ports: {e}"))?;
        let daemon = Arc::new(Self {
            inner: Mutex::new(inner),
            ct_pin: config.pin_dir.join(datapath::MAP_CT),
            ct_timeouts: config.ct_timeouts,
            api: ApiCounters::default(),
        });
        spawn_ct_gc(&daemon.ct_pin, config.ct_timeouts, config.ct_gc_interval)?;
        if let Some(logger) = daemon.inner.lock().await.datapath.take_logger() {
            spawn_log_reader(logger)?;
        }
        daemon.watch_host_addrs()?;
        daemon.adopt(records).await;
        daemon.inner.lock().await.reconcile(host_cookie).await;
        Ok(daemon)
    }

    /// Takes over containers recorded by an earlier ferryd: live ones get
    /// their attachments swapped to the new programs and an exit watcher;
    /// dead ones are marked exited and their network is released.
    async fn adopt(self: &Arc<Self>, records: Vec<ContainerRecord>) {
        let mut inner = self.inner.lock().await;
        for record in records {
            if record.status == Status::Running && record.monitor_alive().is_some() {
                for net in record.attachments() {
                    if let Err(e) = inner.networks.reserve(&net.network, net.ip) {
                        warn!(id = %record.id, %e, "address conflict while adopting");
                    }
                    if let Err(e) = inner.datapath.attach(&net.host_ifname) {
                        warn!(id = %record.id, %e, "cannot re-attach the datapath");
                    }
                    inner.join_dns(&record.id, &record.name, net);
                }
                let user_network = record
                    .network
                    .as_ref()
                    .is_some_and(|n| n.network != crate::network::DEFAULT_NETWORK);
                if user_network
                    && let Some(pid) = record.pid
                    && let Err(e) = inner.serve_dns(&record.id, pid, &record.host_config.dns)
                {
                    warn!(id = %record.id, %e, "cannot serve the container's DNS");
                }
                inner.adopt_ports(&record);
                info!(id = %record.short_id(), "adopted running container");
                if let Some(pid) = record.monitor_pid {
                    self.watch_exit(&mut inner, record.id.clone(), pid);
                }
                inner.containers.insert(record.id.clone(), record);
            } else if record.status == Status::Running {
                // It exited while no ferryd was watching: the monitor left
                // the exit status behind.
                inner.containers.insert(record.id.clone(), record.clone());
                inner.finish(&record.id, None).await;
            } else {
                inner.containers.insert(record.id.clone(), record);
            }
        }
    }

    /// Waits (without a thread) for the monitor to exit, then records it.
    fn watch_exit(self: &Arc<Self>, inner: &mut Inner, id: String, monitor_pid: u32) {
        let (tx, _) = watch::channel(None);
        inner.exits.insert(id.clone(), tx);
        let daemon = Arc::clone(self);
        tokio::spawn(async move {
            let monitor_status = wait_for_exit(monitor_pid).await;
            daemon.inner.lock().await.finish(&id, monitor_status).await;
        });
    }

    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<ContainerRecord, ApiError> {
        let mut inner = self.inner.lock().await;
        let plan = Plan::of(&req, &inner)?;
        let id = random_id()?;
        let name = req.name.clone().unwrap_or_else(|| id[..12].to_owned());
        if inner.containers.values().any(|c| c.name == name) {
            return Err(ApiError::Conflict(format!(
                "the container name {name:?} is already in use"
            )));
        }
        let hostname = match (&req.hostname, &plan.network) {
            (Some(h), _) => h.clone(),
            // Docker: a host-network container has the host's name.
            (None, NetPlan::Host) => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| id[..12].to_owned()),
            (None, _) => id[..12].to_owned(),
        };
        let mut partial = Partial::default();
        match inner
            .create(&id, &name, &hostname, &req, &plan, &mut partial)
            .await
        {
            Ok(record) => {
                if let Some(pid) = record.monitor_pid {
                    self.watch_exit(&mut inner, id.clone(), pid);
                }
                inner.containers.insert(id, record.clone());
                info!(id = %record.short_id(), name = %record.name, ip = ?record.network.as_ref().map(|n| n.ip), "container started");
                Ok(record)
            }
            Err(err) => {
                warn!(%id, %err, "container creation failed; rolling back");
                inner.rollback(&id, partial).await;
                Err(err)
            }
        }
    }

    pub async fn list(&self, all: bool) -> Vec<ContainerRecord> {
        let inner = self.inner.lock().await;
        let mut list: Vec<_> = inner
            .containers
            .values()
            .filter(|c| all || c.status == Status::Running)
            .cloned()
            .collect();
        list.sort_by_key(|c| std::cmp::Reverse(c.created));
        list
    }

    pub async fn inspect(&self, reference: &str) -> Result<ContainerRecord, ApiError> {
        let inner = self.inner.lock().await;
        inner.find(reference).cloned()
    }

    /// SIGTERM, then SIGKILL after `timeout` seconds, as `docker stop`.
    pub async fn stop(&self, reference: &str, timeout: u64) -> Result<(), ApiError> {
        let (pid, mut exited) = {
            let inner = self.inner.lock().await;
            let record = inner.find(reference)?;
            let (Some(pid), Some(tx)) = (record.pid, inner.exits.get(&record.id)) else {
                return Ok(());
            };
            (pid, tx.subscribe())
        };
        let signals = [
            (Signal::SIGTERM, Duration::from_secs(timeout)),
            (Signal::SIGKILL, Duration::from_secs(30)),
        ];
        for (signal, wait) in signals {
            if timeout == 0 && signal == Signal::SIGTERM {
                continue;
            }
            if let Err(e) = kill(Pid::from_raw(pid as i32), signal)
                && e != nix::Error::ESRCH
            {
                return Err(ApiError::Internal(format!(
                    "cannot signal {reference}: {e}"
                )));
            }
            if tokio::time::timeout(wait, exited.wait_for(Option::is_some))
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(ApiError::Internal(format!(
            "container {reference} did not exit after SIGKILL"
        )))
    }

    pub async fn remove(&self, reference: &str, force: bool) -> Result<(), ApiError> {
        let running = {
            let inner = self.inner.lock().await;
            inner.find(reference)?.status == Status::Running
        };
        if running {
            if !force {
                return Err(ApiError::Conflict(format!(
                    "container {reference} is running: stop it first or use ferry rm -f"
                )));
            }
            self.stop(reference, 0).await?;
        }
        let mut inner = self.inner.lock().await;
        let Ok(mut record) = inner.find(reference).cloned() else {
            // It ran with --rm and is gone already.
            return Ok(());
        };
        inner.remove_cgroups(&record.id).await;
        inner.teardown_network(&mut record).await;
        inner
            .store
            .remove(&record.id)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        inner.containers.remove(&record.id);
        info!(id = %record.short_id(), "container removed");
        Ok(())
    }

    pub async fn stats(&self, reference: &str) -> Result<Stats, ApiError> {
        let mut inner = self.inner.lock().await;
        let record = inner.find(reference)?.clone();
        let mut stats = Stats {
            usage: inner.cgroups.usage(&record.id),
            read_ns: nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
                t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
            }),
            ..Stats::default()
        };
        stats.net = inner.counters(&record)?;
        Ok(stats)
    }

    /// `ferry inspect`: the record, plus the datapath programs on the
    /// container's veth and its counters.
    pub async fn inspect_json(&self, reference: &str) -> Result<ContainerJson, ApiError> {
        let mut inner = self.inner.lock().await;
        let record = inner.find(reference)?.clone();
        let mut json = ContainerJson::from(&record);
        if let Some(net) = &record.network {
            json.ferry.programs = inner
                .datapath
                .attachments()
                .into_iter()
                .filter(|a| a.target == net.host_ifname)
                .map(|a| format!("{} ({})", a.program, a.hook))
                .collect();
        }
        for (name, endpoint) in &mut json.network_settings.networks {
            if let Ok(def) = inner.networks.find(name) {
                endpoint.network_id.clone_from(&def.id);
            }
        }
        json.ferry.counters = inner.counters(&record)?;
        json.ferry.port_counters = inner
            .port_counters(&record)?
            .into_iter()
            .map(|(m, c)| {
                let ip = m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
                (format!("{ip}:{}/{}", m.host_port, m.proto), c)
            })
            .collect();
        Ok(json)
    }

    /// Blocks until the container has exited; its exit code.
    pub async fn wait(&self, reference: &str) -> Result<WaitResponse, ApiError> {
        let (id, mut exited) = {
            let inner = self.inner.lock().await;
            let record = inner.find(reference)?;
            match inner.exits.get(&record.id) {
                Some(tx) => (record.id.clone(), tx.subscribe()),
                None => {
                    return Ok(WaitResponse {
                        status_code: record.exit_code.unwrap_or(0),
                        oom_killed: record.oom_killed,
                    });
                }
            }
        };
        let code = exited
            .wait_for(Option::is_some)
            .await
            .map(|c| c.unwrap_or(0))
            .map_err(|_| ApiError::Internal(format!("lost track of container {reference}")))?;
        let inner = self.inner.lock().await;
        Ok(WaitResponse {
            status_code: code,
            oom_killed: inner.containers.get(&id).is_some_and(|c| c.oom_killed),
        })
    }

    /// Sends `signal` to the container's PID 1.
    pub async fn kill(&self, reference: &str, signal: &str) -> Result<(), ApiError> {
        let signal = parse_signal(signal)?;
        let inner = self.inner.lock().await;
        let record = inner.find(reference)?;
        let Some(pid) = record.pid.filter(|_| record.status == Status::Running) else {
            return Err(ApiError::Conflict(format!(
                "container {reference} is not running"
            )));
        };
        kill(Pid::from_raw(pid as i32), signal)
            .map_err(|e| ApiError::Internal(format!("cannot signal {reference}: {e}")))
    }

    /// Starts a command in a running container (see `container::exec_main`).
    /// Its output comes as frames, then one exit frame.
    pub async fn exec(
        &self,
        reference: &str,
        req: ExecRequest,
    ) -> Result<futures::channel::mpsc::Receiver<logs::Chunk>, ApiError> {
        validate::exec_request(&req)?;
        let spec = {
            let inner = self.inner.lock().await;
            let record = inner.find(reference)?;
            let Some(pid) = record.pid.filter(|_| record.status == Status::Running) else {
                return Err(ApiError::Conflict(format!(
                    "container {reference} is not running"
                )));
            };
            let workdir = match (req.working_dir.as_str(), record.working_dir.as_str()) {
                ("", "") => PathBuf::from("/"),
                ("", own) => PathBuf::from(own),
                (dir, _) if dir.starts_with('/') => PathBuf::from(dir),
                (dir, _) => {
                    return Err(ApiError::BadRequest(format!(
                        "the working directory {dir:?} is invalid: it needs to be an absolute path"
                    )));
                }
            };
            ExecSpec {
                pid,
                cgroup_procs: inner.cgroups.procs_files(&record.id),
                cmd: req.cmd,
                env: record.env.iter().cloned().chain(req.env).collect(),
                workdir,
                hostname: record.hostname.clone(),
            }
        };
        let internal = |e: &dyn std::fmt::Display| ApiError::Internal(e.to_string());
        let spec = serde_json::to_string(&spec).map_err(|e| internal(&e))?;
        let mut child = tokio::process::Command::new("/proc/self/exe")
            .arg(container::EXEC_ARG)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| internal(&format!("cannot start the exec helper: {e}")))?;
        // The spec goes through a pipe, not argv: one argument is limited to
        // 128 KiB, a request body to 1 MiB.
        {
            use tokio::io::AsyncWriteExt as _;
            let mut stdin = child
                .stdin
                .take()
                .ok_or_else(|| internal(&"the exec helper has no input pipe"))?;
            stdin
                .write_all(spec.as_bytes())
                .await
                .map_err(|e| internal(&format!("passing the exec spec: {e}")))?;
        }
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(internal(&"the exec helper has no output pipes"));
        };
        let (mut tx, rx) = futures::channel::mpsc::channel(64);
        tokio::spawn(async move {
            use futures::SinkExt as _;
            let out = tokio::spawn(logs::copy_frames(stdout, Stream::Stdout, tx.clone()));
            let err = tokio::spawn(logs::copy_frames(stderr, Stream::Stderr, tx.clone()));
            let _ = out.await;
            let _ = err.await;
            let code = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt as _;
                    status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
                }
                Err(_) => 126,
            };
            let _ = tx.send(Ok(logs::exit_frame(code))).await;
        });
        Ok(rx)
    }

    /// The container's log file and, while it runs, a receiver that says
    /// when it has exited (its output is complete then).
    pub async fn log_source(
        &self,
        reference: &str,
    ) -> Result<(PathBuf, Option<watch::Receiver<Option<i32>>>), ApiError> {
        let inner = self.inner.lock().await;
        let record = inner.find(reference)?;
        Ok((
            inner.store.log_path(&record.id),
            inner.exits.get(&record.id).map(watch::Sender::subscribe),
        ))
    }

    pub async fn datapath_info(&self) -> Result<DatapathJson, ApiError> {
        let mut inner = self.inner.lock().await;
        let internal = |e: datapath::DatapathError| ApiError::Internal(e.to_string());
        let drops = inner.datapath.drops().map_err(internal)?;
        let mut attachments = Vec::new();
        for a in inner.datapath.attachments() {
            let mode = if a.hook == "xdp" {
                inner
                    .netlink
                    .xdp_mode(&a.target)
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .unwrap_or("detached")
            } else {
                ""
            };
            attachments.push(AttachmentJson {
                target: a.target,
                program: a.program.to_owned(),
                hook: a.hook.to_owned(),
                mode: mode.to_owned(),
            });
        }
        let fill = inner.datapath.map_fill().map_err(internal)?;
        let conntrack = conntrack_json(inner.datapath.ct_counts().map_err(internal)?, &fill);
        let maps = fill
            .into_iter()
            .map(|m| MapJson {
                name: m.name.to_owned(),
                kind: m.kind,
                entries: m.entries,
                capacity: m.capacity,
            })
            .collect();
        Ok(DatapathJson {
            conntrack,
            debug_log: inner.datapath.debug_log().map_err(internal)?,
            pin_dir: inner.datapath.pin_dir().display().to_string(),
            endpoints: inner.datapath.endpoint_count().map_err(internal)?,
            programs: datapath::PROGRAMS.iter().map(|p| (*p).to_owned()).collect(),
            attachments,
            maps,
            drops: drops
                .into_iter()
                .map(|(reason, n): (DropReason, u64)| (reason.name().to_owned(), n))
                .collect(),
        })
    }
}

impl Daemon {
    pub fn api_counters(&self) -> &ApiCounters {
        &self.api
    }

    /// Switches the datapath's debug logging; returns the new state.
    pub async fn set_debug_log(&self, on: bool) -> Result<bool, ApiError> {
        let mut inner = self.inner.lock().await;
        let internal = |e: datapath::DatapathError| ApiError::Internal(e.to_string());
        inner.datapath.set_debug_log(on).map_err(internal)?;
        info!(on, "datapath debug logging");
        inner.datapath.debug_log().map_err(internal)
    }

    /// Everything `GET /metrics` shows, in the Prometheus text format.
    pub async fn metrics_text(&self) -> Result<String, ApiError> {
        let internal = |e: datapath::DatapathError| ApiError::Internal(e.to_string());
        let mut inner = self.inner.lock().await;
        let records: Vec<ContainerRecord> = inner.containers.values().cloned().collect();
        let mut rows = Vec::new();
        let mut ports = Vec::new();
        for r in &records {
            for (m, c) in inner.port_counters(r)? {
                ports.push((r.name.clone(), m, c));
            }
        }
        for r in records {
            let net = inner.counters(&r)?;
            let usage = if r.status == Status::Running {
                inner.cgroups.usage(&r.id)
            } else {
                Usage::default()
            };
            rows.push((r, net, usage));
        }
        let drops = inner.datapath.drops().map_err(internal)?;
        let maps = inner.datapath.map_fill().map_err(internal)?;
        let conntrack = conntrack_json(inner.datapath.ct_counts().map_err(internal)?, &maps);
        drop(inner);

        let mut out = String::new();
        let mut f = Family::new(
            &mut out,
            "ferry_containers",
            "gauge",
            "Containers known to ferryd, by status.",
        );
        for status in [Status::Running, Status::Exited] {
            let n = rows.iter().filter(|(r, _, _)| r.status == status).count();
            f.sample(&[("status", status.as_str())], n);
        }
        type Pick = fn(&NetCounters, &Usage) -> u64;
        let per_container: [(&'static str, &str, &str, Pick); 8] = [
            (
                "ferry_container_rx_packets_total",
                "counter",
                "Packets the datapath delivered to the container.",
                |n, _| n.rx_packets,
            ),
            (
                "ferry_container_rx_bytes_total",
                "counter",
                "Bytes the datapath delivered to the container.",
                |n, _| n.rx_bytes,
            ),
            (
                "ferry_container_tx_packets_total",
                "counter",
                "Packets the container sent into the datapath.",
                |n, _| n.tx_packets,
            ),
            (
                "ferry_container_tx_bytes_total",
                "counter",
                "Bytes the container sent into the datapath.",
                |n, _| n.tx_bytes,
            ),
            (
                "ferry_container_cpu_nanoseconds_total",
                "counter",
                "CPU time of the container's processes.",
                |_, u| u.cpu_ns,
            ),
            (
                "ferry_container_cpu_throttled_periods_total",
                "counter",
                "CFS periods in which the CPU quota throttled the container.",
                |_, u| u.nr_throttled,
            ),
            (
                "ferry_container_memory_bytes",
                "gauge",
                "Memory in use, reclaimable page cache left out.",
                |_, u| u.memory,
            ),
            (
                "ferry_container_pids",
                "gauge",
                "Processes in the container.",
                |_, u| u.pids,
            ),
        ];
        for (name, kind, help, pick) in per_container {
            let mut f = Family::new(&mut out, name, kind, help);
            for (r, net, usage) in &rows {
                f.sample(
                    &[("container", &r.name), ("id", r.short_id())],
                    pick(net, usage),
                );
            }
        }
        type PickNet = fn(&NetCounters) -> u64;
        let per_port: [(&'static str, &str, PickNet); 4] = [
            (
                "ferry_port_rx_packets_total",
                "Packets through the uplink to a published port.",
                |n| n.rx_packets,
            ),
            (
                "ferry_port_rx_bytes_total",
                "Bytes through the uplink to a published port.",
                |n| n.rx_bytes,
            ),
            (
                "ferry_port_tx_packets_total",
                "Reply packets of a published port to the uplink.",
                |n| n.tx_packets,
            ),
            (
                "ferry_port_tx_bytes_total",
                "Reply bytes of a published port to the uplink.",
                |n| n.tx_bytes,
            ),
        ];
        for (name, help, pick) in per_port {
            let mut f = Family::new(&mut out, name, "counter", help);
            for (container, m, c) in &ports {
                let ip = m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string();
                let port = m.host_port.to_string();
                let proto = m.proto.to_string();
                f.sample(
                    &[
                        ("container", container),
                        ("host_ip", &ip),
                        ("host_port", &port),
                        ("proto", &proto),
                    ],
                    pick(c),
                );
            }
        }
        let mut f = Family::new(
            &mut out,
            "ferry_drops_total",
            "counter",
            "Packets the datapath dropped, by reason.",
        );
        for (reason, n) in &drops {
            f.sample(&[("reason", reason.name())], n);
        }
        let mut f = Family::new(
            &mut out,
            "ferry_map_entries",
            "gauge",
            "Entries in each datapath map (arrays count as full).",
        );
        for m in &maps {
            f.sample(&[("map", m.name)], m.entries);
        }
        let mut f = Family::new(
            &mut out,
            "ferry_map_capacity",
            "gauge",
            "Capacity (max_entries) of each datapath map.",
        );
        for m in &maps {
            f.sample(&[("map", m.name)], m.capacity);
        }
        let mut f = Family::new(
            &mut out,
            "ferry_map_fill_ratio",
            "gauge",
            "Entries over capacity of each datapath map (0 to 1).",
        );
        for m in &maps {
            f.sample(
                &[("map", m.name)],
                m.entries as f64 / f64::from(m.capacity.max(1)),
            );
        }
        let mut f = Family::new(
            &mut out,
            "ferry_conntrack_entries",
            "gauge",
            "Tracked flow entries (two per flow: one each way).",
        );
        f.sample(&[], conntrack.entries);
        let mut f = Family::new(
            &mut out,
            "ferry_conntrack_created_total",
            "counter",
            "Conntrack entries the datapath created.",
        );
        f.sample(&[], conntrack.created);
        let mut f = Family::new(
            &mut out,
            "ferry_conntrack_evictions_total",
            "counter",
            "Conntrack entries the full LRU map evicted (created - removed by ferryd - live).",
        );
        f.sample(&[], conntrack.evicted);
        let mut f = Family::new(
            &mut out,
            "ferry_api_requests_total",
            "counter",
            "Requests to ferryd's API, by method, route and status.",
        );
        for ((method, route, status), n) in self.api.snapshot() {
            f.sample(
                &[
                    ("method", &method),
                    ("route", &route),
                    ("status", &status.to_string()),
                ],
                n,
            );
        }
        Ok(out)
    }

    /// Keeps `host_addrs` in sync with the host: a netlink subscription to
    /// IPv4 address changes triggers a resync, so a publish on every
    /// address also covers addresses added later (DHCP, a second IP).
    fn watch_host_addrs(self: &Arc<Self>) -> anyhow::Result<()> {
        let (connection, _, mut events) =
            rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Ipv4Ifaddr])?;
        tokio::spawn(connection);
        let daemon = Arc::clone(self);
        tokio::spawn(async move {
            use futures::StreamExt as _;
            while events.next().await.is_some() {
                let mut inner = daemon.inner.lock().await;
                if let Err(e) = inner.refresh_host_addrs().await {
                    warn!(%e, "cannot resync host addresses");
                }
            }
        });
        Ok(())
    }

    /// Tracked flows, decoded; only those of one container (by name or
    /// ID) and one protocol if given.
    pub async fn conntrack(
        &self,
        container: Option<&str>,
        proto: Option<&str>,
    ) -> Result<Vec<Flow>, ApiError> {
        if let Some(p) = proto
            && !["tcp", "udp", "icmp"].contains(&p)
        {
            return Err(ApiError::BadRequest(format!(
                "unknown protocol {p:?}: tcp, udp or icmp"
            )));
        }
        let ip = match container {
            Some(c) => {
                let inner = self.inner.lock().await;
                let record = inner.find(c)?;
                match &record.network {
                    Some(net) => Some(net.ip),
                    None => return Ok(Vec::new()),
                }
            }
            None => None,
        };
        let ct = Conntrack::open(&self.ct_pin).map_err(|e| ApiError::Internal(e.to_string()))?;
        let timeouts = self.ct_timeouts;
        let flows = tokio::task::spawn_blocking(move || ct.list(&timeouts))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(flows
            .into_iter()
            .filter(|f| ip.is_none_or(|ip| f.involves(ip)))
            .filter(|f| proto.is_none_or(|p| f.proto == p))
            .collect())
    }

    /// Forgets every tracked flow; returns how many entries went.
    pub async fn conntrack_flush(&self) -> Result<usize, ApiError> {
        let mut ct =
            Conntrack::open(&self.ct_pin).map_err(|e| ApiError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || ct.flush())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// `ferry network create`: the network, its policy in the datapath.
    pub async fn network_create(&self, req: NetworkCreate) -> Result<NetworkJson, ApiError> {
        let mut inner = self.inner.lock().await;
        let host_addrs = inner
            .netlink
            .ipv4_addresses()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let spec = crate::network::CreateSpec {
            name: &req.name,
            subnet: &req.subnet,
            internal: req.internal,
            options: &req.options,
        };
        let def = inner
            .networks
            .create(&spec, random_id()?, now(), &host_addrs)?;
        if let Err(e) = inner.datapath.set_network(def.net_id, def.flags()) {
            let _ = inner.networks.remove(&def.name);
            return Err(match e {
                datapath::DatapathError::Full { .. } => ApiError::Full(e.to_string()),
                e => ApiError::Internal(e.to_string()),
            });
        }
        info!(network = %def.name, subnet = %def.subnet, net_id = def.net_id, internal = def.internal, icc = def.icc, "network created");
        Ok(NetworkJson::of(&def, &[]))
    }

    pub async fn network_list(&self) -> Vec<NetworkJson> {
        let inner = self.inner.lock().await;
        inner
            .networks
            .list()
            .map(|def| NetworkJson::of(def, &inner.members(&def.name)))
            .collect()
    }

    pub async fn network_inspect(&self, reference: &str) -> Result<NetworkJson, ApiError> {
        let inner = self.inner.lock().await;
        let def = inner.networks.find(reference)?;
        Ok(NetworkJson::of(def, &inner.members(&def.name)))
    }

    /// `ferry network rm`: refused while a running container is on it.
    pub async fn network_remove(&self, reference: &str) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let def = inner.networks.find(reference)?.clone();
        let members: Vec<String> = inner
            .members(&def.name)
            .iter()
            .map(|r| r.name.clone())
            .collect();
        if !members.is_empty() {
            return Err(ApiError::Conflict(format!(
                "network {} is in use by container(s) {}",
                def.name,
                members.join(", ")
            )));
        }
        inner.networks.remove(&def.name)?;
        if let Err(e) = inner.datapath.remove_network(def.net_id) {
            warn!(network = %def.name, %e, "cannot remove the network's policy");
        }
        info!(network = %def.name, "network removed");
        Ok(())
    }

    /// `ferry network connect`: a new interface (eth1, ...) for a running
    /// container, on the network.
    pub async fn network_connect(
        &self,
        reference: &str,
        req: NetworkConnect,
    ) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let def = inner.networks.find(reference)?.clone();
        let mut record = inner.find(&req.container)?.clone();
        let (Some(pid), Status::Running) = (record.pid, record.status) else {
            return Err(ApiError::Conflict(format!(
                "container {} is not running",
                req.container
            )));
        };
        if record.network.is_none() {
            return Err(ApiError::BadRequest(format!(
                "container {} has no ferry network to add one to (it runs with --network {})",
                record.name, record.host_config.network_mode
            )));
        }
        if record.attachments().any(|n| n.network == def.name) {
            return Err(ApiError::Conflict(format!(
                "container {} is already connected to network {}",
                record.name, def.name
            )));
        }
        let ep = &req.endpoint_config;
        let ip = endpoint_address(&def, ep)?;
        let taken: Vec<&NetworkRecord> = record.attachments().collect();
        let link = Link::next(&record.id, &taken).ok_or_else(|| {
            ApiError::Conflict(format!("container {} has no interface left", record.name))
        })?;
        let mut partial = Partial::default();
        let wired = inner.wire_bridge(pid, &def, ip, &link, &mut partial).await;
        let mut net = match wired {
            Ok(net) => net,
            Err(e) => {
                warn!(id = %record.id, network = %def.name, %e, "connect failed; rolling back");
                inner.rollback(&record.id, partial).await;
                return Err(e);
            }
        };
        net.aliases.clone_from(&ep.aliases);
        inner.join_dns(&record.id, &record.name, &net);
        info!(id = %record.short_id(), network = %def.name, ip = %net.ip, ifname = %net.ifname, "connected");
        record.extra_networks.push(net);
        inner.save(record)
    }

    /// `ferry network disconnect`: removes an interface added by connect.
    pub async fn network_disconnect(
        &self,
        reference: &str,
        req: NetworkDisconnect,
    ) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let def = inner.networks.find(reference)?.clone();
        let mut record = inner.find(&req.container)?.clone();
        if record
            .network
            .as_ref()
            .is_some_and(|n| n.network == def.name)
        {
            return Err(ApiError::BadRequest(format!(
                "{} is the first network (eth0) of container {}: only networks added by \
                 `ferry network connect` can be disconnected",
                def.name, record.name
            )));
        }
        let Some(at) = record
            .extra_networks
            .iter()
            .position(|n| n.network == def.name)
        else {
            return Err(ApiError::NotFound(format!(
                "container {} is not connected to network {}",
                record.name, def.name
            )));
        };
        let net = record.extra_networks.remove(at);
        inner.detach(&record.id, &net).await;
        info!(id = %record.short_id(), network = %def.name, "disconnected");
        inner.save(record)
    }
}

/// Drains the programs' aya-log ring buffer into ferryd's log whenever it
/// has records (only while `ferry debug datapath on`).
fn spawn_log_reader(logger: aya_log::EbpfLogger<&'static dyn log::Log>) -> anyhow::Result<()> {
    // SAFETY: the AsyncFd owns the logger, whose ring buffer fd therefore
    // stays open and the same for the AsyncFd's whole life.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }?;
    tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!(%e, "datapath log reader stopped");
                    return;
                }
            }
        }
    });
    Ok(())
}

/// The conntrack GC: every `interval`, one pass on a blocking thread with
/// its own fd of the pinned map, so neither the API nor the datapath waits
/// for it. Each pass is a short task: a shutting-down runtime never waits
/// on an endless one.
fn spawn_ct_gc(pin: &Path, timeouts: Timeouts, interval: Duration) -> anyhow::Result<()> {
    let mut ct = Conntrack::open(pin)?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let pass = tokio::task::spawn_blocking(move || {
                let removed = ct.collect(&timeouts);
                (ct, removed)
            });
            match pass.await {
                Ok((back, removed)) => {
                    ct = back;
                    if removed > 0 {
                        tracing::debug!(removed, map = ct.path(), "conntrack GC");
                    }
                }
                Err(e) => {
                    warn!(%e, "conntrack GC stopped");
                    return;
                }
            }
        }
    });
    Ok(())
}

impl Inner {
    /// By full ID, unique ID prefix, or name.
    fn find(&self, reference: &str) -> Result<&ContainerRecord, ApiError> {
        if let Some(c) = self.containers.values().find(|c| c.name == reference) {
            return Ok(c);
        }
        let mut matches = self
            .containers
            .values()
            .filter(|c| c.id.starts_with(reference));
        match (matches.next(), matches.next()) {
            (Some(c), None) if !reference.is_empty() => Ok(c),
            (Some(_), Some(_)) => Err(ApiError::NotFound(format!(
                "ambiguous container reference: {reference}"
            ))),
            _ => Err(ApiError::NotFound(format!(
                "no such container: {reference}"
            ))),
        }
    }

    /// Traffic of each of the container's published ports.
    fn port_counters(
        &mut self,
        record: &ContainerRecord,
    ) -> Result<Vec<(PortMapping, NetCounters)>, ApiError> {
        record
            .ports
            .iter()
            .map(|m| {
                let s = self
                    .datapath
                    .port_stats(&port_key(m))
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                Ok((*m, NetCounters::from(s)))
            })
            .collect()
    }

    /// A container's datapath counters (zero without a bridge network).
    fn counters(&mut self, record: &ContainerRecord) -> Result<NetCounters, ApiError> {
        let Some(net) = &record.network else {
            return Ok(NetCounters::default());
        };
        let s = self
            .datapath
            .endpoint_stats(net.ip)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(NetCounters::from(s))
    }

    /// Refuses a host path (rootfs, volume source) inside ferry's own state
    /// or run directories: other containers' state, logs and the API socket.
    fn refuse_own_dirs(&self, what: &str, path: &Path) -> Result<(), ApiError> {
        let Ok(real) = path.canonicalize() else {
            return Ok(());
        };
        match self
            .hidden
            .iter()
            .filter_map(|d| d.canonicalize().ok())
            .find(|d| real.starts_with(d))
        {
            Some(dir) => Err(ApiError::BadRequest(format!(
                "{what} {} is inside ferry's own directory {}",
                path.display(),
                dir.display()
            ))),
            None => Ok(()),
        }
    }

    /// Records a container's exit and frees what it held: the status the
    /// monitor wrote (if the monitor itself died first, the workload died
    /// with it by SIGKILL), OOM kills counted by its cgroup; then its
    /// cgroup and network go, and the container too if it ran with --rm.
    async fn finish(&mut self, id: &str, monitor_status: Option<i32>) {
        let Some(mut record) = self.containers.get(id).cloned() else {
            return;
        };
        let exit = ExitRecord::read(&self.store.exit_path(id));
        let code = match (exit, monitor_status) {
            (Some(e), _) => e.exit_code,
            (None, Some(c)) if c != 0 => c,
            (None, _) => 128 + Signal::SIGKILL as i32,
        };
        record.status = Status::Exited;
        record.exit_code = Some(code);
        record.finished = Some(exit.map_or_else(now, |e| e.finished_at));
        record.oom_killed = self.cgroups.usage(id).oom_kills > 0;
        record.pid = None;
        record.monitor_pid = None;
        self.remove_cgroups(id).await;
        self.teardown_network(&mut record).await;
        info!(id = %record.short_id(), code, oom_killed = record.oom_killed, "container exited");
        if record.host_config.auto_remove {
            if let Err(e) = self.store.remove(id) {
                warn!(%id, %e, "cannot remove state");
            }
            self.containers.remove(id);
            info!(id = %record.short_id(), "container removed (--rm)");
        } else {
            if let Err(e) = self.store.save(&record) {
                warn!(%id, %e, "cannot save state");
            }
            self.containers.insert(id.to_owned(), record);
        }
        if let Some(tx) = self.exits.remove(id) {
            let _ = tx.send(Some(code));
        }
    }

    async fn create(
        &mut self,
        id: &str,
        name: &str,
        hostname: &str,
        req: &RunRequest,
        plan: &Plan,
        partial: &mut Partial,
    ) -> Result<ContainerRecord, ApiError> {
        let internal = |e: &dyn std::fmt::Display| ApiError::Internal(e.to_string());
        self.store.prepare(id).map_err(|e| internal(&e))?;
        partial.dir = true;
        partial.cgroup = true;
        self.cgroups
            .create(id, &req.host_config.resources)
            .map_err(|e| match e {
                CgroupError::Invalid { .. } => ApiError::BadRequest(e.to_string()),
                other => internal(&other),
            })?;
        let joined_netns = match &plan.network {
            NetPlan::Container { pid, .. } => Some(netns::of_pid(*pid).map_err(|e| {
                ApiError::Conflict(format!("cannot join the network of that container: {e}"))
            })?),
            _ => None,
        };
        let monitor_net = match (&plan.network, &joined_netns) {
            (NetPlan::Host, _) => MonitorNet::Host,
            (_, Some(ns)) => MonitorNet::Join(ns.as_fd()),
            _ => MonitorNet::New,
        };
        let monitor = container::spawn_monitor(&self.store.monitor_log_path(id), monitor_net)
            .map_err(|e| internal(&e))?;
        partial.monitor_pid = Some(monitor.pid);
        let monitor_start_time = process_start_time(monitor.pid);

        let (network, ports) = match &plan.network {
            NetPlan::Bridge {
                network,
                ip,
                aliases,
            } => {
                let mut net = self
                    .wire_bridge(monitor.pid, network, *ip, &Link::first(id), partial)
                    .await?;
                net.aliases.clone_from(aliases);
                self.join_dns(id, name, &net);
                partial.dns = Some((net.network.clone(), net.ip));
                if !network.is_default() {
                    self.serve_dns(id, monitor.pid, &req.host_config.dns)
                        .map_err(|e| internal(&format!("cannot serve the container's DNS: {e}")))?;
                }
                let ports = self.publish(id, net.ip, &plan.specs, partial).await?;
                (Some(net), ports)
            }
            NetPlan::None => {
                let (inside, _) = netlink_in(monitor.pid).map_err(|e| internal(&e))?;
                if let Some(lo) = inside.index_of("lo").await.map_err(|e| internal(&e))? {
                    inside.set_up(lo).await.map_err(|e| internal(&e))?;
                }
                (None, Vec::new())
            }
            NetPlan::Host | NetPlan::Container { .. } => (None, Vec::new()),
        };

        let rootfs = self
            .rootfs_spec(id, hostname, req, plan, network.as_ref().map(|n| n.ip))
            .map_err(|e| internal(&e))?;
        let spec = InitSpec {
            hostname: hostname.to_owned(),
            cmd: req.cmd.clone(),
            env: req.env.clone(),
            cgroup_procs: self.cgroups.procs_files(id),
            log: self.store.log_path(id),
            exit_file: self.store.exit_path(id),
            rootfs,
        };
        let pid = tokio::task::spawn_blocking(move || monitor.start(&spec))
            .await
            .map_err(|e| internal(&e))?
            .map_err(|e| match e {
                container::ContainerError::Exec { .. } => ApiError::BadRequest(e.to_string()),
                other => internal(&other),
            })?;

        let record = ContainerRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            cmd: req.cmd.clone(),
            env: req.env.clone(),
            hostname: hostname.to_owned(),
            created: now(),
            status: Status::Running,
            monitor_pid: partial.monitor_pid,
            pid: Some(pid),
            monitor_start_time,
            exit_code: None,
            finished: None,
            network,
            extra_networks: Vec::new(),
            ports,
            oom_killed: false,
            working_dir: plan.workdir.display().to_string(),
            host_config: req.host_config.clone(),
        };
        self.store.save(&record).map_err(|e| internal(&e))?;
        Ok(record)
    }

    /// Gives the container in `monitor_pid`'s network namespace an address
    /// and a veth wired to the datapath. Everything made is recorded in
    /// `partial` for rollback.
    async fn wire_bridge(
        &mut self,
        monitor_pid: u32,
        network: &NetworkDef,
        requested: Option<Ipv4Addr>,
        link: &Link,
        partial: &mut Partial,
    ) -> Result<NetworkRecord, ApiError> {
        let internal = |e: &dyn std::fmt::Display| ApiError::Internal(e.to_string());
        let ip = self.networks.allocate(&network.name, requested)?;
        partial.ip = Some(ip);
        let (mac, host_mac) = macs_for(ip);
        let host_ifname = link.host_ifname.clone();

        // The container's side, configured through a netlink socket opened
        // inside its namespace. IPv6 is off there (and on the host side)
        // because the datapath forwards IPv4 only so far.
        let ns = netns::of_pid(monitor_pid).map_err(|e| internal(&e))?;
        let (inside, netns_cookie) = netlink_in(monitor_pid).map_err(|e| internal(&e))?;
        if link.first {
            partial.netns_cookie = Some(netns_cookie);
            self.datapath
                .add_netns(netns_cookie, NETNS_CONTAINER)
                .map_err(|e| internal(&e))?;
        }
        partial.host_ifname = Some(host_ifname.clone());
        let host_ifindex = self
            .netlink
            .create_veth(&host_ifname, host_mac, &link.ifname, mac, ns.as_fd())
            .await
            .map_err(|e| internal(&e))?;
        partial.host_ifindex = Some(host_ifindex);
        netns::write_net_sysctl(&format!("ipv6/conf/{host_ifname}/disable_ipv6"), "1")
            .map_err(|e| internal(&format!("disabling IPv6 on {host_ifname}: {e}")))?;
        // bpf_fib_lookup honours the ingress device's forwarding switch. The
        // stack itself never forwards a container's packet: from_container
        // decides every one (see lxc.rs `to_outside`).
        netns::write_net_sysctl(&format!("ipv4/conf/{host_ifname}/forwarding"), "1").map_err(
            |e| {
                internal(&format!(
                    "enabling forwarding lookups on {host_ifname}: {e}"
                ))
            },
        )?;

        self.datapath
            .add_endpoint(
                ip,
                Endpoint {
                    ifindex: host_ifindex,
                    net_id: network.net_id,
                    mac,
                    host_mac,
                    // Given by the datapath.
                    stats: 0,
                },
            )
            .map_err(|e| map_full(e, "containers", "--endpoint-max"))?;
        self.datapath
            .attach(&host_ifname)
            .map_err(|e| internal(&e))?;

        self.netlink
            .set_up(host_ifindex)
            .await
            .map_err(|e| internal(&e))?;
        self.netlink
            .add_permanent_neighbour(host_ifindex, ip, mac)
            .await
            .map_err(|e| internal(&e))?;
        self.netlink
            .add_host_route(host_ifindex, ip)
            .await
            .map_err(|e| internal(&e))?;

        let gateway = Ipv4Addr::from(GATEWAY_V4);
        let lo = inside.index_of("lo").await.map_err(|e| internal(&e))?;
        let eth0 = inside
            .index_of(&link.ifname)
            .await
            .map_err(|e| internal(&e))?;
        let (Some(lo), Some(eth)) = (lo, eth0) else {
            return Err(ApiError::Internal(
                "container interfaces missing after veth creation".into(),
            ));
        };
        inside.set_up(lo).await.map_err(|e| internal(&e))?;
        inside.set_up(eth).await.map_err(|e| internal(&e))?;
        inside
            .add_address(eth, ip, 32)
            .await
            .map_err(|e| internal(&e))?;
        inside
            .add_permanent_neighbour(eth, gateway, host_mac)
            .await
            .map_err(|e| internal(&e))?;
        // The first interface has the default route; a connected one
        // routes its network's subnet, from its own address.
        let subnet = (!link.first).then_some((network.subnet, ip));
        inside
            .add_route_onlink(eth, subnet, gateway)
            .await
            .map_err(|e| internal(&e))?;
        Ok(NetworkRecord {
            ip,
            mac,
            host_ifname,
            host_ifindex,
            host_mac,
            netns_cookie,
            network: network.name.clone(),
            aliases: Vec::new(),
            ifname: link.ifname.clone(),
        })
    }

    /// The container's root: directories for the overlay, and its own
    /// /etc/hosts, /etc/hostname and /etc/resolv.conf.
    fn rootfs_spec(
        &self,
        id: &str,
        hostname: &str,
        req: &RunRequest,
        plan: &Plan,
        ip: Option<Ipv4Addr>,
    ) -> io::Result<RootfsSpec> {
        let dir = self.store.container_dir(id);
        let layers = dir.join("rootfs");
        let (upper, work, merged) = (
            layers.join("upper"),
            layers.join("work"),
            layers.join("merged"),
        );
        let etc = dir.join("etc");
        for d in [&upper, &work, &merged, &etc] {
            std::fs::create_dir_all(d)?;
        }
        let host_network = matches!(plan.network, NetPlan::Host);
        let mut hosts = if host_network {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            let mut hosts =
                String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
            if let Some(ip) = ip {
                hosts.push_str(&format!("{ip}\t{hostname}\n"));
            }
            hosts
        };
        for entry in &req.host_config.extra_hosts {
            if let Ok((name, addr)) = validate::extra_host(entry) {
                hosts.push_str(&format!("{addr}\t{name}\n"));
            }
        }
        let dns = &req.host_config.dns;
        let resolv = match &plan.network {
            // The embedded DNS, which forwards to --dns if given.
            NetPlan::Bridge { network, .. } if !network.is_default() => {
                format!("nameserver {}\noptions ndots:0\n", dns::DNS_ADDR)
            }
            _ if !dns.is_empty() => dns.iter().map(|d| format!("nameserver {d}\n")).collect(),
            _ => resolv_conf(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                host_network,
            ),
        };
        let mut files = Vec::new();
        for (file, contents) in [
            ("hosts", hosts),
            ("hostname", format!("{hostname}\n")),
            ("resolv.conf", resolv),
        ] {
            let source = etc.join(file);
            std::fs::write(&source, contents)?;
            files.push(Bind {
                source,
                target: Path::new("/etc").join(file),
                read_only: false,
            });
        }
        Ok(RootfsSpec {
            image: plan.image.clone(),
            upper,
            work,
            merged,
            read_only: req.host_config.readonly_rootfs,
            binds: plan.binds.clone(),
            files,
            hidden: self.hidden.clone(),
            workdir: plan.workdir.clone(),
        })
    }

    /// Undoes whatever `create` got to, every step attempted.
    async fn rollback(&mut self, id: &str, partial: Partial) {
        if let Some(pid) = partial.monitor_pid {
            // Killing the monitor kills the workload too (PDEATHSIG), and its
            // namespaces go with them.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid as i32), None);
        }
        if partial.cgroup {
            self.remove_cgroups(id).await;
        }
        for key in &partial.ports {
            if let Err(e) = self.datapath.remove_port(key) {
                warn!(%id, %e, "rollback: cannot unpublish a port");
            }
        }
        self.reservations.remove(id);
        if let Some(cookie) = partial.netns_cookie
            && let Err(e) = self.datapath.remove_netns(cookie)
        {
            warn!(%id, %e, "rollback: cannot forget the namespace");
        }
        if let Some(ifname) = &partial.host_ifname {
            self.datapath.forget(ifname);
        }
        if let Some(index) = partial.host_ifindex
            && let Err(e) = self.netlink.delete(index).await
        {
            warn!(%id, %e, "rollback: cannot delete veth");
        }
        if let Some((network, ip)) = &partial.dns {
            self.stop_dns(id);
            self.dns_table.remove(id, network, *ip);
        }
        if let Some(ip) = partial.ip {
            if let Err(e) = self.datapath.remove_endpoint(ip) {
                warn!(%id, %e, "rollback: cannot remove endpoint");
            }
            self.networks.release(ip);
        }
        if partial.dir
            && let Err(e) = self.store.remove(id)
        {
            warn!(%id, %e, "rollback: cannot remove state");
        }
    }

    /// Removes a container's cgroups, waiting (off the runtime's threads)
    /// for its last processes to leave them.
    async fn remove_cgroups(&self, id: &str) {
        let cgroups = self.cgroups.clone();
        let owned = id.to_owned();
        match tokio::task::spawn_blocking(move || cgroups.remove(&owned)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(%id, %e, "cannot remove the cgroups"),
            Err(e) => warn!(%id, %e, "cannot remove the cgroups"),
        }
    }

    /// Reserves the host ports of `specs` and publishes them to `ip`.
    /// Everything made is recorded in `partial` for rollback.
    async fn publish(
        &mut self,
        id: &str,
        ip: Ipv4Addr,
        specs: &[PublishSpec],
        partial: &mut Partial,
    ) -> Result<Vec<PortMapping>, ApiError> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        // The host's addresses may have changed since the last publish.
        self.refresh_host_addrs()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut mappings = Vec::new();
        for spec in specs {
            let allocated = portmap::allocate(spec).map_err(|e| self.explain_conflict(e))?;
            for (mapping, reservation) in allocated {
                let key = port_key(&mapping);
                let target = PortTarget {
                    ip: ip.octets(),
                    port: mapping.container_port.to_be_bytes(),
                    pad: [0; 2],
                };
                self.datapath
                    .add_port(key, target)
                    .map_err(|e| map_full(e, "published ports", "--port-max"))?;
                partial.ports.push(key);
                self.reservations
                    .entry(id.to_owned())
                    .or_default()
                    .push(reservation);
                mappings.push(mapping);
            }
        }
        Ok(mappings)
    }

    /// A port in use because another container publishes it says which.
    fn explain_conflict(&self, err: ReserveError) -> ApiError {
        if let ReserveError::InUse { ip, port, proto } = &err {
            let owner = self.containers.values().find(|c| {
                c.ports.iter().any(|m| {
                    m.host_port == *port
                        && m.proto == *proto
                        && (m.host_ip.is_none() || ip.is_unspecified() || m.host_ip == Some(*ip))
                })
            });
            if let Some(owner) = owner {
                return ApiError::Conflict(format!(
                    "{proto} port {port} is already published by container {}",
                    owner.name
                ));
            }
        }
        ApiError::Conflict(err.to_string())
    }

    /// Finds what a crash in the middle of a run or a removal can leave
    /// behind and removes it, logging each: cgroups, host veths and
    /// datapath entries of no running container, mounts below ferry's own
    /// directories. (Pins of unknown names went at load; a container
    /// directory without a config went with its cgroups before adoption.)
    async fn reconcile(&mut self, host_cookie: u64) {
        let running: Vec<&ContainerRecord> = self
            .containers
            .values()
            .filter(|r| r.status == Status::Running)
            .collect();
        let nets: Vec<&NetworkRecord> = running.iter().flat_map(|r| r.attachments()).collect();
        let live = datapath::Live {
            ips: nets.iter().map(|n| n.ip).collect(),
            ports: running
                .iter()
                .flat_map(|r| r.ports.iter().map(port_key))
                .collect(),
            netns: nets
                .iter()
                .map(|n| n.netns_cookie)
                .chain([host_cookie])
                .collect(),
            networks: self
                .networks
                .list()
                .filter(|d| !d.is_default())
                .map(|d| d.net_id)
                .collect(),
        };
        let ids: Vec<String> = running.iter().map(|r| r.id.clone()).collect();
        let veths: Vec<String> = nets.iter().map(|n| n.host_ifname.clone()).collect();
        for id in self.cgroups.children() {
            if ids.contains(&id) {
                continue;
            }
            let killed = self.cgroups.kill_all(&id);
            match self.cgroups.remove(&id) {
                Ok(()) => warn!(%id, ?killed, "removed the cgroups of no running container"),
                Err(e) => warn!(%id, %e, "cannot remove the cgroups of no running container"),
            }
        }
        match self.netlink.links().await {
            Ok(links) => {
                for (index, name) in links {
                    if !is_host_veth(&name) || veths.contains(&name) {
                        continue;
                    }
                    match self.netlink.delete(index).await {
                        Ok(()) => warn!(veth = %name, "removed a veth of no running container"),
                        Err(e) => {
                            warn!(veth = %name, %e, "cannot remove a veth of no running container")
                        }
                    }
                }
            }
            Err(e) => warn!(%e, "cannot list interfaces to find leftover veths"),
        }
        match self.datapath.prune(&live) {
            Ok(removed) => {
                for entry in removed {
                    warn!(%entry, "removed a datapath entry of no running container");
                }
            }
            Err(e) => warn!(%e, "cannot check the datapath maps for leftover entries"),
        }
        for point in mounts_below(&self.hidden) {
            match nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => {
                    warn!(mount = %point.display(), "unmounted a leftover mount in ferry's directories")
                }
                Err(e) => warn!(mount = %point.display(), %e, "cannot unmount a leftover mount"),
            }
        }
    }

    /// Registers the container's names (name, short ID, aliases) on the
    /// network of `net`, for the embedded DNS of that network's containers.
    /// Nothing for the default network (as Docker's).
    fn join_dns(&self, id: &str, name: &str, net: &NetworkRecord) {
        let Ok(def) = self.networks.find(&net.network) else {
            return;
        };
        if def.is_default() {
            return;
        }
        let mut names = vec![name.to_owned(), id[..12].to_owned()];
        names.extend(net.aliases.iter().cloned());
        self.dns_table
            .add(id, &net.network, def.internal, &names, net.ip);
    }

    /// Serves 127.0.0.11:53 in the namespace of `pid` for container `id`:
    /// the names of all its networks, the rest forwarded to `dns` (else
    /// the default upstreams).
    fn serve_dns(&mut self, id: &str, pid: u32, dns: &[String]) -> Result<(), String> {
        let netns = netns::of_pid(pid).map_err(|e| e.to_string())?;
        let socket = dns::bind_in(netns).map_err(|e| format!("binding 127.0.0.11:53: {e}"))?;
        let upstreams = if dns.is_empty() {
            self.default_upstreams()
        } else {
            dns.iter()
                .filter_map(|d| d.parse::<Ipv4Addr>().ok())
                .map(|ip| std::net::SocketAddr::from((ip, 53)))
                .collect()
        };
        let task = tokio::spawn(dns::serve(
            socket,
            self.dns_table.clone(),
            id.to_owned(),
            upstreams,
        ));
        if let Some(old) = self.dns_tasks.insert(id.to_owned(), task.abort_handle()) {
            old.abort();
        }
        Ok(())
    }

    /// Stops serving the container's DNS (its socket closes with the task).
    fn stop_dns(&mut self, id: &str) {
        if let Some(task) = self.dns_tasks.remove(id) {
            task.abort();
        }
    }

    /// `--dns-upstream`, else the host's resolv.conf nameservers.
    fn default_upstreams(&self) -> Vec<std::net::SocketAddr> {
        if self.dns_upstreams.is_empty() {
            dns::nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        } else {
            self.dns_upstreams.clone()
        }
    }

    /// Stores a changed record and keeps it as the current one.
    fn save(&mut self, record: ContainerRecord) -> Result<(), ApiError> {
        self.store
            .save(&record)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        self.containers.insert(record.id.clone(), record);
        Ok(())
    }

    /// Running containers attached to `network`.
    fn members(&self, network: &str) -> Vec<&ContainerRecord> {
        self.containers
            .values()
            .filter(|r| {
                r.status == Status::Running && r.attachments().any(|n| n.network == network)
            })
            .collect()
    }

    /// Holds the ports of a container taken over from an earlier ferryd.
    fn adopt_ports(&mut self, record: &ContainerRecord) {
        for mapping in &record.ports {
            let spec = PublishSpec {
                host_ip: mapping.host_ip,
                host_ports: HostPorts::Range(mapping.host_port, mapping.host_port),
                container_ports: (mapping.container_port, mapping.container_port),
                proto: mapping.proto,
            };
            match portmap::allocate(&spec) {
                Ok(held) => self
                    .reservations
                    .entry(record.id.clone())
                    .or_default()
                    .extend(held.into_iter().map(|(_, r)| r)),
                Err(e) => warn!(id = %record.id, %e, "cannot hold an adopted port"),
            }
        }
    }

    /// Syncs `host_addrs` with this namespace's IPv4 addresses. Loopback
    /// addresses are left out: nothing outside the host can reach them, and
    /// in a container 127.0.0.1 is the container's own (the socket hooks
    /// treat loopback separately, for the host's namespace only).
    async fn refresh_host_addrs(&mut self) -> anyhow::Result<()> {
        let mut addrs = self.netlink.ipv4_addresses().await?;
        addrs.retain(|a| !a.is_loopback());
        self.datapath.set_host_addrs(&addrs)?;
        Ok(())
    }

    /// Removes a container's network: map entries, veth (its route and
    /// neighbour go with it), address. Idempotent.
    async fn teardown_network(&mut self, record: &mut ContainerRecord) {
        for mapping in std::mem::take(&mut record.ports) {
            if let Err(e) = self.datapath.remove_port(&port_key(&mapping)) {
                warn!(id = %record.id, %e, "cannot unpublish {mapping}");
            }
        }
        self.reservations.remove(&record.id);
        self.stop_dns(&record.id);
        let extra = std::mem::take(&mut record.extra_networks);
        for net in extra.iter().chain(record.network.take().as_ref()) {
            self.detach(&record.id, net).await;
        }
    }

    /// Takes one network attachment apart: DNS names, endpoint, socket
    /// hooks (for the first), veth, address.
    async fn detach(&mut self, id: &str, net: &NetworkRecord) {
        self.dns_table.remove(id, &net.network, net.ip);
        if let Err(e) = self.datapath.remove_endpoint(net.ip) {
            warn!(%id, %e, "cannot remove endpoint");
        }
        if net.ifname == "eth0"
            && let Err(e) = self.datapath.remove_netns(net.netns_cookie)
        {
            warn!(%id, %e, "cannot forget the namespace");
        }
        self.datapath.forget(&net.host_ifname);
        // The veth normally dies with the container's namespace, but that
        // happens asynchronously in the kernel: delete it now, by name, so
        // that it is gone when `rm` returns.
        match self.netlink.index_of(&net.host_ifname).await {
            Ok(Some(index)) => {
                if let Err(e) = self.netlink.delete(index).await {
                    warn!(%id, %e, "cannot delete veth");
                }
            }
            Ok(None) => {}
            Err(e) => warn!(%id, %e, "cannot look up veth"),
        }
        self.networks.release(net.ip);
    }
}

/// Conntrack entries now (the `ct` map's fill, counted once by
/// `map_fill`) and since the maps were made (`ct_stats`), evictions
/// included.
fn conntrack_json(counts: crate::conntrack::CtCounts, fill: &[datapath::MapFill]) -> ConntrackJson {
    let live = fill
        .iter()
        .find(|m| m.name == datapath::MAP_CT)
        .map_or(0, |m| m.entries as u64);
    ConntrackJson {
        entries: live,
        created: counts.created,
        removed: counts.removed,
        evicted: counts.evicted(live),
    }
}

/// A netlink socket inside the network namespace of `pid`, and that
/// namespace's cookie.
fn netlink_in(pid: u32) -> anyhow::Result<(Netlink, u64)> {
    let ns = netns::of_pid(pid)?;
    let _guard = NetNsGuard::enter(ns.as_fd())?;
    for key in [
        "ipv6/conf/all/disable_ipv6",
        "ipv6/conf/default/disable_ipv6",
    ] {
        netns::write_net_sysctl(key, "1").map_err(|e| anyhow::anyhow!("sysctl {key}: {e}"))?;
    }
    let cookie = netns::current_cookie().map_err(|e| anyhow::anyhow!("netns cookie: {e}"))?;
    Ok((Netlink::current()?, cookie))
}

/// A container's resolv.conf from the host's: loopback name servers only
/// work in the host's own namespace, so they are left out (and Docker's
/// public fallback used when none is left).
fn resolv_conf(host: &str, host_network: bool) -> String {
    if host_network {
        return host.to_owned();
    }
    let mut out: Vec<&str> = host
        .lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            !(words.next() == Some("nameserver")
                && words
                    .next()
                    .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                    .is_some_and(|a| a.is_loopback()))
        })
        .collect();
    if !out.iter().any(|l| l.starts_with("nameserver")) {
        out.extend(["nameserver 8.8.8.8", "nameserver 8.8.4.4"]);
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// `SIGTERM`, `TERM` or `15`, as `docker kill -s` takes them.
/// A datapath map without room for one more of `what` is the user's to
/// fix (remove some, or give the maps more room); other map errors are
/// ferry's.
fn map_full(e: datapath::DatapathError, what: &str, flag: &str) -> ApiError {
    match e {
        datapath::DatapathError::Full { .. } => ApiError::Full(format!(
            "{e}: no room for more {what}; remove some, or stop ferryd, run `ferryd reset` and \
             start it with a larger {flag}"
        )),
        e => ApiError::Internal(e.to_string()),
    }
}

fn parse_signal(name: &str) -> Result<Signal, ApiError> {
    let bad = || ApiError::BadRequest(format!("invalid signal: {name}"));
    if let Ok(n) = name.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>().map_err(|_| bad())
}

/// The datapath key of a published port.
fn port_key(mapping: &PortMapping) -> PortKey {
    PortKey {
        ip: mapping.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
        port: mapping.host_port.to_be_bytes(),
        proto: mapping.proto.number(),
        pad: 0,
    }
}

/// The uplinks to serve: as configured, else the default route's.
async fn uplinks(config: &Config, netlink: &Netlink) -> anyhow::Result<Vec<String>> {
    if !config.uplinks.is_empty() {
        return Ok(config.uplinks.clone());
    }
    let found = netlink.default_route_interfaces().await?;
    if found.is_empty() {
        warn!("no default route and no --uplink: published ports are not served from outside");
    }
    Ok(found)
}

/// Waits for a process to exit via its pidfd; reaps it and returns its exit
/// code when it is our child (`None` for an adopted one).
async fn wait_for_exit(pid: u32) -> Option<i32> {
    // SAFETY: the AsyncFd owns the pidfd, so the fd stays open and the same
    // for the AsyncFd's whole life.
    let registered = container::pidfd_open(pid).and_then(|fd| {
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
    });
    match registered {
        Ok(fd) => {
            if let Err(e) = fd.readable().await {
                warn!(pid, %e, "waiting on pidfd");
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
        Err(e) => warn!(pid, %e, "pidfd_open"),
    }
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
        _ => None,
    }
}

/// `ferryd reset`: removes every container, attachment, pin and state file
/// that ferryd with this configuration owns. Refuses while ferryd runs.
pub async fn reset(config: &Config) -> anyhow::Result<()> {
    preflight::require_root()?;
    std::fs::create_dir_all(&config.run_dir)?;
    let _lock = lock(&config.run_dir)?;
    let mut failures = Vec::new();
    let netlink = Netlink::current()?;
    let store = Store::new(&config.state_dir)?;
    let cgroups = Cgroups::detect(&config.cgroup_parent, &config.cgroup)?;
    let (records, orphans) = store.load_all()?;
    for id in &orphans {
        if let Err(e) = cgroups.remove(id) {
            failures.push(e.to_string());
        }
        if let Err(e) = store.remove(id) {
            failures.push(e.to_string());
        }
    }
    for record in &records {
        if let Some(monitor) = record.monitor_alive() {
            // The workload dies with its monitor (PDEATHSIG).
            let _ = kill(Pid::from_raw(monitor as i32), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(monitor as i32), None);
        }
        if let Err(e) = cgroups.remove(&record.id) {
            failures.push(e.to_string());
        }
        for net in record.attachments() {
            match netlink.index_of(&net.host_ifname).await {
                Ok(Some(index)) => {
                    if let Err(e) = netlink.delete(index).await {
                        failures.push(format!("delete {}: {e}", net.host_ifname));
                    }
                }
                Ok(None) => {}
                Err(e) => failures.push(format!("look up {}: {e}", net.host_ifname)),
            }
        }
        if let Err(e) = store.remove(&record.id) {
            failures.push(e.to_string());
        }
        info!(id = %record.short_id(), "removed");
    }
    let tc_ingress = uplinks(config, &netlink)
        .await?
        .into_iter()
        .map(|uplink| (uplink, datapath::PROG_UPLINK_INGRESS))
        .chain([(datapath::LOOPBACK.to_owned(), datapath::PROG_LOCAL_INGRESS)]);
    for (ifname, program) in tc_ingress {
        match aya::programs::tc::qdisc_detach_program(
            &ifname,
            aya::programs::TcAttachType::Ingress,
            program,
        ) {
            Ok(()) => info!(%ifname, program, "detached"),
            Err(aya::programs::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => failures.push(format!("detach {program} from {ifname}: {e}")),
        }
    }
    if let Err(e) = cgroups.remove_parents() {
        failures.push(e.to_string());
    }
    if let Err(e) = netns::loopback_hairpin(false) {
        failures.push(format!("restore lo's settings: {e}"));
    }
    if let Err(e) = portmap::reserve_snat_ports(false) {
        failures.push(format!("release the masquerade ports: {e}"));
    }
    for (path, is_dir) in [(&config.pin_dir, true), (&config.socket, false)] {
        let result = if is_dir {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        match result {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                failures.push(format!("remove {}: {e}", path.display()))
            }
            _ => {}
        }
    }
    if failures.is_empty() {
        info!("reset complete");
        Ok(())
    } else {
        anyhow::bail!("reset incomplete:\n  {}", failures.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veths_are_known_by_their_shape() {
        assert!(is_host_veth("fyd763e2d11f6b"));
        for other in [
            "fy",
            "fyd763e2d11f6",
            "fyd763e2d11f6bb",
            "fyxyz3e2d11f6b",
            "eth0",
            "uplink0",
        ] {
            assert!(!is_host_veth(other), "{other}");
        }
    }

    #[test]
    fn links_get_distinct_interface_and_veth_names() {
        let id = "d763e2d11f6b0123";
        let first = Link::first(id);
        assert_eq!(
            (first.ifname.as_str(), first.host_ifname.as_str()),
            ("eth0", "fyd763e2d11f6b")
        );
        let mut taken = vec![NetworkRecord {
            ip: Ipv4Addr::new(10, 90, 0, 2),
            mac: [0; 6],
            host_ifname: first.host_ifname.clone(),
            host_ifindex: 1,
            host_mac: [0; 6],
            netns_cookie: 1,
            network: "a".into(),
            aliases: vec![],
            ifname: first.ifname.clone(),
        }];
        let second = Link::next(id, &taken.iter().collect::<Vec<_>>()).expect("second");
        assert_eq!(
            (second.ifname.as_str(), second.host_ifname.as_str()),
            ("eth1", "fyd763e2d11f6g")
        );
        assert!(is_host_veth(&second.host_ifname) && !second.first);
        taken.push(NetworkRecord {
            host_ifname: second.host_ifname,
            ifname: second.ifname,
            ..taken[0].clone()
        });
        let third = Link::next(id, &taken.iter().collect::<Vec<_>>()).expect("third");
        assert_eq!(
            (third.ifname.as_str(), third.host_ifname.as_str()),
            ("eth2", "fyd763e2d11f6h")
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/var/lib/a\040b"), "/var/lib/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y\011"), "/x\\y\t");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/odd\9"), r"/odd\9");
    }
}
