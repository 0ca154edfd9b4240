//! ferryd: owns all state, serialises every change behind one lock, and
//! rolls back partial work when a step fails.
//!
//! The daemon is where ferry's runtime (containers: `containers`, `control`)
//! and the network agent (`ferry_net::agent`) meet; endpoints of other
//! engines (`endpoints`) use the agent alone. `networks` serves `ferry
//! network`, `observe` the counters, conntrack and metrics, `reset`
//! `ferryd reset`.

mod cluster;
mod containers;
mod control;
mod docker;
mod endpoints;
mod images;
mod names;
mod networks;
mod observe;
mod prune;
mod reset;

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use ferry_common::{NETNS_HOST, PortKey};
use ferry_net::{
    agent::{Agent, NetworkRecord, port_key},
    endpoint::{EndpointRecord, EndpointStore},
};
use nix::{
    fcntl::{Flock, FlockArg},
    sys::wait::{WaitPidFlag, WaitStatus, waitpid},
    unistd::Pid,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::UnixListener,
    sync::{Mutex, watch},
};
use tracing::{info, warn};

use self::observe::{spawn_ct_gc, spawn_log_reader};
pub use self::reset::reset;
use crate::{
    api::{self, ApiError, Member},
    cgroup::Cgroups,
    config::Config,
    conntrack::Timeouts,
    container,
    datapath::Datapath,
    link::Netlink,
    metrics::{self, ApiCounters},
    netns,
    network::Networks,
    portmap, preflight,
    state::{ContainerRecord, Status, Store},
};

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

pub struct Daemon {
    inner: Mutex<Inner>,
    /// The image store (its own lock: loading an image must not hold up
    /// the containers).
    images: Arc<ferry_image::Store>,
    /// `--insecure-registry`.
    insecure_registries: Vec<String>,
    /// Where the conntrack maps are pinned, for listing and flushing (own
    /// fds, no lock).
    ct_pins: std::path::PathBuf,
    ct_timeouts: Timeouts,
    api: ApiCounters,
    /// This node's membership of a cluster (`--cluster`).
    cluster: Option<Arc<cluster::Cluster>>,
}

struct Inner {
    containers: BTreeMap<String, ContainerRecord>,
    /// Per running container: the exit code once it has exited.
    exits: HashMap<String, watch::Sender<Option<i32>>>,
    cgroups: Cgroups,
    /// Host directories a container must not see (ferry's own state).
    hidden: Vec<PathBuf>,
    /// `--userns-remap`: containers' ids on the host, and the user
    /// namespace that maps them, which every container joins.
    userns: Option<(ferry_runtime::userns::IdMap, std::os::fd::OwnedFd)>,
    store: Store,
    /// Endpoints, networks, published ports, DNS: the network agent.
    agent: Agent,
    /// Endpoints of other engines (CNI, Docker), by ferry's endpoint id.
    endpoints: BTreeMap<String, EndpointRecord>,
    endpoint_store: EndpointStore,
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
    let plugin = match &config.docker_plugin {
        Some(path) => match crate::docker::serve(Arc::clone(&daemon), path) {
            Ok(p) => Some(p),
            Err(e) => {
                let _ = std::fs::remove_file(&config.socket);
                return Err(e);
            }
        },
        None => None,
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
    if let Some(plugin) = plugin {
        let _ = std::fs::remove_file(plugin);
    }
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

impl Daemon {
    async fn start(config: &Config) -> anyhow::Result<Arc<Self>> {
        let netlink = Netlink::current()?;
        let uplinks = uplinks(config, &netlink).await?;
        // Before anything is pinned: a node that cannot join leaves nothing.
        let cluster = match &config.cluster {
            Some(c) => Some(Arc::new(
                cluster::Cluster::join(c, &config.state_dir, &netlink, &uplinks).await?,
            )),
            None => None,
        };
        let datapath = Datapath::load_sized(&config.pin_dir, config.map_sizes)?;
        let store = Store::new(&config.state_dir)?;
        let endpoint_store = EndpointStore::new(&config.state_dir)?;
        // In a cluster, the default network's subnet is this node's block.
        let subnet = cluster
            .as_ref()
            .map_or(config.subnet, |c| c.membership.block());
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
            userns: match &config.userns_remap {
                Some(spec) => {
                    let map = ferry_runtime::userns::remap(spec).map_err(anyhow::Error::msg)?;
                    let ns = ferry_runtime::userns::create(&map).map_err(anyhow::Error::msg)?;
                    info!(
                        uid = map.uid,
                        gid = map.gid,
                        count = map.count,
                        "user namespaces remap root"
                    );
                    Some((map, ns))
                }
                None => None,
            },
            store,
            agent: Agent::new(
                datapath,
                Networks::load(&config.state_dir, subnet)?,
                netlink,
                config.dns_upstreams.clone(),
            ),
            endpoints: BTreeMap::new(),
            endpoint_store,
        };
        inner.agent.uplinks = uplinks;
        if let Some(cluster) = &cluster {
            inner.agent.mtu = cluster.mtu;
            if cluster.underlay.vxlan.is_some() {
                let device = ferry_net::datapath::VXLAN_DEVICE;
                inner.agent.datapath.attach_tunnel(device)?;
                info!(
                    device,
                    "members reached through VXLAN where not on the segment"
                );
            }
        }
        for uplink in inner.agent.uplinks.clone() {
            let xdp = config.xdp_prefilter.applies_to(&uplink);
            inner.agent.datapath.attach_uplink(&uplink, xdp)?;
            info!(%uplink, xdp_prefilter = xdp, "published ports served on this uplink");
        }
        inner.agent.serve_parents().await;
        inner.agent.datapath.attach_loopback()?;
        netns::loopback_hairpin(true)
            .map_err(|e| anyhow::anyhow!("cannot set up lo for published ports: {e}"))?;
        inner.agent.refresh_host_addrs().await?;
        for def in inner
            .agent
            .networks
            .list()
            .filter(|d| !d.is_default())
            .cloned()
            .collect::<Vec<_>>()
        {
            inner.agent.datapath.set_network(def.net_id, def.flags())?;
        }
        inner.agent.datapath.attach_cgroup(&config.cgroup)?;
        let host_cookie = netns::current_cookie()?;
        inner.agent.datapath.add_netns(host_cookie, NETNS_HOST)?;
        info!(cgroup = %config.cgroup.display(), "socket hooks attached");
        portmap::reserve_snat_ports(true)
            .map_err(|e| anyhow::anyhow!("cannot reserve the masquerade ports: {e}"))?;
        ferry_image::init_tls();
        let images = ferry_image::Store::open(&config.state_dir.join("images"))
            .map_err(|e| anyhow::anyhow!("cannot open the image store: {e}"))?;
        let daemon = Arc::new(Self {
            inner: Mutex::new(inner),
            images: Arc::new(images),
            insecure_registries: config.insecure_registries.clone(),
            ct_pins: config.pin_dir.clone(),
            ct_timeouts: config.ct_timeouts,
            api: ApiCounters::default(),
            cluster,
        });
        spawn_ct_gc(&daemon.ct_pins, config.ct_timeouts, config.ct_gc_interval)?;
        if let Some(logger) = daemon.inner.lock().await.agent.datapath.take_logger() {
            spawn_log_reader(logger)?;
        }
        daemon.watch_host_addrs()?;
        daemon.adopt(records).await;
        daemon.adopt_endpoints().await;
        daemon.inner.lock().await.reconcile(host_cookie).await;
        daemon.follow_cluster();
        Ok(daemon)
    }

    /// Takes over containers recorded by an earlier ferryd: live ones get
    /// their attachments swapped to the new programs and an exit watcher;
    /// dead ones are marked exited and their network is released.
    async fn adopt(self: &Arc<Self>, records: Vec<ContainerRecord>) {
        let mut inner = self.inner.lock().await;
        for record in records {
            if record.status == Status::Running && record.monitor_alive().is_some() {
                let names = record.dns_names();
                for net in record.attachments() {
                    inner.agent.adopt(&record.id, net);
                    inner.agent.join_dns(&record.id, &names, net, None);
                }
                let user_network = record
                    .network
                    .as_ref()
                    .is_some_and(|n| n.network != crate::network::DEFAULT_NETWORK);
                if user_network && let Some(pid) = record.pid {
                    let served = netns::of_pid(pid)
                        .map_err(|e| e.to_string())
                        .and_then(|ns| {
                            inner
                                .agent
                                .serve_dns(&record.id, ns, &record.host_config.dns)
                        });
                    if let Err(e) = served {
                        warn!(id = %record.id, %e, "cannot serve the container's DNS");
                    }
                }
                inner.agent.adopt_ports(
                    &record.id,
                    &record.owner_name(),
                    &record.ports,
                    ferry_net::portmap::Hold::Socket,
                );
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

    /// Stores a changed record and keeps it as the current one.
    fn save(&mut self, record: ContainerRecord) -> Result<(), ApiError> {
        self.store
            .save(&record)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        self.containers.insert(record.id.clone(), record);
        Ok(())
    }

    /// Running containers attached to `network`.
    fn members(&self, network: &str) -> Vec<Member<'_>> {
        let containers = self
            .containers
            .values()
            .filter(|r| r.status == Status::Running);
        let mut members: Vec<Member> = containers
            .flat_map(|r| {
                r.attachments()
                    .filter(|n| n.network == network)
                    .map(|n| Member::of(&r.id, &r.name, n))
            })
            .collect();
        members.extend(
            self.endpoints
                .values()
                .filter(|e| e.network.network == network)
                .map(|e| Member::of(&e.id, &e.name, &e.network)),
        );
        members
    }

    /// Finds what a crash in the middle of a run or a removal can leave
    /// behind and removes it, logging each: cgroups of no running
    /// container, host veths and datapath entries of no running container
    /// and no endpoint of another engine, mounts below ferry's own
    /// directories. (Pins of unknown names went at load; a container
    /// directory without a config went with its cgroups before adoption.)
    async fn reconcile(&mut self, host_cookie: u64) {
        let running: Vec<&ContainerRecord> = self
            .containers
            .values()
            .filter(|r| r.status == Status::Running)
            .collect();
        let ids: Vec<String> = running.iter().map(|r| r.id.clone()).collect();
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
        let nets: Vec<&NetworkRecord> = running
            .iter()
            .flat_map(|r| r.attachments())
            .chain(self.endpoints.values().map(|e| &e.network))
            .collect();
        let ports: Vec<PortKey> = running
            .iter()
            .flat_map(|r| &r.ports)
            .chain(self.endpoints.values().flat_map(|e| &e.ports))
            .map(port_key)
            .collect();
        self.agent.prune(&nets, &ports, host_cookie).await;
        for point in mounts_below(&self.hidden) {
            match nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => {
                    warn!(mount = %point.display(), "unmounted a leftover mount in ferry's directories")
                }
                Err(e) => warn!(mount = %point.display(), %e, "cannot unmount a leftover mount"),
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/var/lib/a\040b"), "/var/lib/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y\011"), "/x\\y\t");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/odd\9"), r"/odd\9");
    }
}
