//! ferryd: owns all state, serialises every change behind one lock, and
//! rolls back partial work when a step fails.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io,
    net::Ipv4Addr,
    os::{fd::AsFd as _, unix::fs::PermissionsExt as _},
    path::Path,
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
    api::{self, ApiError, DatapathJson, NetStats, RunRequest},
    config::Config,
    conntrack::{Conntrack, Flow, Timeouts},
    container::{self, InitSpec},
    datapath::{self, Datapath},
    ipam::{Ipam, IpamError},
    link::{Mac, Netlink},
    netns::{self, NetNsGuard},
    portmap::{self, HostPorts, PortMapping, PublishSpec, Reservation, ReserveError},
    preflight,
    state::{ContainerRecord, NetworkRecord, Status, Store, process_start_time},
};

/// The interface name inside every container.
const CONTAINER_IFNAME: &str = "eth0";

pub struct Daemon {
    inner: Mutex<Inner>,
    /// The pinned `ct` map, for listing and flushing (own fd, no lock).
    ct_pin: std::path::PathBuf,
    ct_timeouts: Timeouts,
}

struct Inner {
    containers: BTreeMap<String, ContainerRecord>,
    exits: HashMap<String, watch::Sender<bool>>,
    ipam: Ipam,
    datapath: Datapath,
    store: Store,
    netlink: Netlink,
    /// Host ports held for each running container's publishes.
    reservations: HashMap<String, Vec<Reservation>>,
}

/// Everything that must exist before ferryd serves, checked in the order a
/// user would fix them.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    preflight::require_root()?;
    preflight::require_bpf()?;
    preflight::ensure_bpffs(&config.pin_dir)?;
    // Refuse a served socket before creating anything.
    socket_in_use(&config.socket)?;
    for dir in [&config.state_dir, &config.run_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    let _lock = lock(&config.run_dir)?;
    let listener = bind_socket(&config)?;
    let daemon = match Daemon::start(&config).await {
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

/// Docker's rule for container names.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128
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
    ports: Vec<PortKey>,
    netns_cookie: Option<u64>,
}

impl Daemon {
    async fn start(config: &Config) -> anyhow::Result<Arc<Self>> {
        let datapath = Datapath::load(&config.pin_dir)?;
        let store = Store::new(&config.state_dir)?;
        let netlink = Netlink::current()?;
        let (records, orphans) = store.load_all()?;
        for id in orphans {
            warn!(%id, "removing a container directory without a config (creation was interrupted)");
            store.remove(&id)?;
        }
        let mut inner = Inner {
            containers: BTreeMap::new(),
            exits: HashMap::new(),
            ipam: Ipam::new(config.subnet),
            datapath,
            store,
            netlink,
            reservations: HashMap::new(),
        };
        for uplink in uplinks(config, &inner.netlink).await? {
            inner.datapath.attach_uplink(&uplink)?;
            info!(%uplink, "published ports served on this uplink");
        }
        inner.refresh_host_addrs().await?;
        inner.datapath.attach_cgroup(&config.cgroup)?;
        inner
            .datapath
            .add_netns(netns::current_cookie()?, NETNS_HOST)?;
        info!(cgroup = %config.cgroup.display(), "socket hooks attached");
        portmap::reserve_snat_ports(true)
            .map_err(|e| anyhow::anyhow!("cannot reserve the masquerade ports: {e}"))?;
        let daemon = Arc::new(Self {
            inner: Mutex::new(inner),
            ct_pin: config.pin_dir.join(datapath::MAP_CT),
            ct_timeouts: config.ct_timeouts,
        });
        spawn_ct_gc(&daemon.ct_pin, config.ct_timeouts, config.ct_gc_interval)?;
        daemon.watch_host_addrs()?;
        daemon.adopt(records).await;
        Ok(daemon)
    }

    /// Takes over containers recorded by an earlier ferryd: live ones get
    /// their attachments swapped to the new programs and an exit watcher;
    /// dead ones are marked exited and their network is released.
    async fn adopt(self: &Arc<Self>, records: Vec<ContainerRecord>) {
        let mut inner = self.inner.lock().await;
        for mut record in records {
            if record.status == Status::Running && record.monitor_alive().is_some() {
                if let Some(net) = &record.network {
                    if let Err(e) = inner.ipam.reserve(net.ip) {
                        warn!(id = %record.id, %e, "address conflict while adopting");
                    }
                    if let Err(e) = inner.datapath.attach(&net.host_ifname) {
                        warn!(id = %record.id, %e, "cannot re-attach the datapath");
                    }
                }
                inner.adopt_ports(&record);
                info!(id = %record.short_id(), "adopted running container");
                if let Some(pid) = record.monitor_pid {
                    self.watch_exit(&mut inner, record.id.clone(), pid);
                }
                inner.containers.insert(record.id.clone(), record);
            } else {
                if record.status == Status::Running {
                    record.status = Status::Exited;
                    record.finished = Some(now());
                }
                inner.teardown_network(&mut record).await;
                if let Err(e) = inner.store.save(&record) {
                    warn!(id = %record.id, %e, "cannot save state");
                }
                inner.containers.insert(record.id.clone(), record);
            }
        }
    }

    /// Waits (without a thread) for the monitor to exit, then records it.
    fn watch_exit(self: &Arc<Self>, inner: &mut Inner, id: String, monitor_pid: u32) {
        let (tx, _) = watch::channel(false);
        inner.exits.insert(id.clone(), tx);
        let daemon = Arc::clone(self);
        tokio::spawn(async move {
            let code = wait_for_exit(monitor_pid).await;
            daemon.on_exit(&id, code).await;
        });
    }

    async fn on_exit(&self, id: &str, code: Option<i32>) {
        let mut inner = self.inner.lock().await;
        let Some(mut record) = inner.containers.get(id).cloned() else {
            return;
        };
        info!(id = %record.short_id(), ?code, "container exited");
        record.status = Status::Exited;
        record.exit_code = code;
        record.finished = Some(now());
        record.pid = None;
        record.monitor_pid = None;
        inner.teardown_network(&mut record).await;
        if let Err(e) = inner.store.save(&record) {
            warn!(%id, %e, "cannot save state");
        }
        inner.containers.insert(id.to_owned(), record);
        if let Some(tx) = inner.exits.remove(id) {
            let _ = tx.send(true);
        }
    }

    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<ContainerRecord, ApiError> {
        if req.cmd.is_empty() || req.cmd[0].is_empty() {
            return Err(ApiError::BadRequest(
                "no command given: ferry run [OPTIONS] -- CMD [ARGS...]".into(),
            ));
        }
        let specs = req
            .publish
            .iter()
            .map(|p| p.parse::<PublishSpec>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let mut inner = self.inner.lock().await;
        let id = random_id()?;
        let name = req.name.clone().unwrap_or_else(|| id[..12].to_owned());
        if !valid_name(&name) {
            return Err(ApiError::BadRequest(format!(
                "invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        if inner.containers.values().any(|c| c.name == name) {
            return Err(ApiError::Conflict(format!(
                "the container name {name:?} is already in use"
            )));
        }
        let hostname = req.hostname.clone().unwrap_or_else(|| id[..12].to_owned());
        let mut partial = Partial::default();
        match inner
            .create(&id, &name, &hostname, &req, &specs, &mut partial)
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
            if tokio::time::timeout(wait, exited.wait_for(|done| *done))
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
        let mut record = inner.find(reference)?.clone();
        inner.teardown_network(&mut record).await;
        inner
            .store
            .remove(&record.id)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        inner.containers.remove(&record.id);
        info!(id = %record.short_id(), "container removed");
        Ok(())
    }

    pub async fn stats(&self, reference: &str) -> Result<NetStats, ApiError> {
        let mut inner = self.inner.lock().await;
        let Some(net) = inner.find(reference)?.network.clone() else {
            return Ok(NetStats::default());
        };
        let s = inner
            .datapath
            .endpoint_stats(net.ip)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(NetStats {
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
        })
    }

    pub async fn datapath_info(&self) -> Result<DatapathJson, ApiError> {
        let mut inner = self.inner.lock().await;
        let internal = |e: datapath::DatapathError| ApiError::Internal(e.to_string());
        let drops = inner.datapath.drops().map_err(internal)?;
        Ok(DatapathJson {
            pin_dir: inner.datapath.pin_dir().display().to_string(),
            endpoints: inner.datapath.endpoint_count().map_err(internal)?,
            programs: datapath::PROGRAMS.iter().map(|p| (*p).to_owned()).collect(),
            drops: drops
                .into_iter()
                .map(|(reason, n): (DropReason, u64)| (reason.name().to_owned(), n))
                .collect(),
        })
    }
}

impl Daemon {
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

    /// Every tracked flow, decoded.
    pub async fn conntrack(&self) -> Result<Vec<Flow>, ApiError> {
        let ct = Conntrack::open(&self.ct_pin).map_err(|e| ApiError::Internal(e.to_string()))?;
        let timeouts = self.ct_timeouts;
        tokio::task::spawn_blocking(move || ct.list(&timeouts))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Forgets every tracked flow; returns how many entries went.
    pub async fn conntrack_flush(&self) -> Result<usize, ApiError> {
        let mut ct =
            Conntrack::open(&self.ct_pin).map_err(|e| ApiError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || ct.flush())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
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

    async fn create(
        &mut self,
        id: &str,
        name: &str,
        hostname: &str,
        req: &RunRequest,
        specs: &[PublishSpec],
        partial: &mut Partial,
    ) -> Result<ContainerRecord, ApiError> {
        let internal = |e: &dyn std::fmt::Display| ApiError::Internal(e.to_string());
        let ip = self.ipam.allocate().map_err(|e| match e {
            IpamError::Exhausted(_) => ApiError::Unavailable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        })?;
        partial.ip = Some(ip);
        let (mac, host_mac) = macs_for(ip);
        let host_ifname = format!("fy{}", &id[..12]);

        self.store.prepare(id).map_err(|e| internal(&e))?;
        partial.dir = true;
        let monitor =
            container::spawn_monitor(&self.store.log_path(id)).map_err(|e| internal(&e))?;
        partial.monitor_pid = Some(monitor.pid);
        let monitor_start_time = process_start_time(monitor.pid);

        // The container's side, configured through a netlink socket opened
        // inside its namespace. IPv6 is off there (and on the host side)
        // because the datapath forwards IPv4 only so far.
        let ns = netns::of_pid(monitor.pid).map_err(|e| internal(&e))?;
        let (inside, netns_cookie) = {
            let _guard = NetNsGuard::enter(ns.as_fd()).map_err(|e| internal(&e))?;
            for key in [
                "ipv6/conf/all/disable_ipv6",
                "ipv6/conf/default/disable_ipv6",
            ] {
                netns::write_net_sysctl(key, "1")
                    .map_err(|e| internal(&format!("sysctl {key}: {e}")))?;
            }
            let cookie =
                netns::current_cookie().map_err(|e| internal(&format!("netns cookie: {e}")))?;
            (Netlink::current().map_err(|e| internal(&e))?, cookie)
        };
        partial.netns_cookie = Some(netns_cookie);
        self.datapath
            .add_netns(netns_cookie, NETNS_CONTAINER)
            .map_err(|e| internal(&e))?;
        partial.host_ifname = Some(host_ifname.clone());
        let host_ifindex = self
            .netlink
            .create_veth(&host_ifname, host_mac, CONTAINER_IFNAME, mac, ns.as_fd())
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
                    net_id: 0,
                    mac,
                    host_mac,
                },
            )
            .map_err(|e| internal(&e))?;
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
            .index_of(CONTAINER_IFNAME)
            .await
            .map_err(|e| internal(&e))?;
        let (Some(lo), Some(eth0)) = (lo, eth0) else {
            return Err(ApiError::Internal(
                "container interfaces missing after veth creation".into(),
            ));
        };
        inside.set_up(lo).await.map_err(|e| internal(&e))?;
        inside.set_up(eth0).await.map_err(|e| internal(&e))?;
        inside
            .add_address(eth0, ip, 32)
            .await
            .map_err(|e| internal(&e))?;
        inside
            .add_permanent_neighbour(eth0, gateway, host_mac)
            .await
            .map_err(|e| internal(&e))?;
        inside
            .add_default_route_onlink(eth0, gateway)
            .await
            .map_err(|e| internal(&e))?;

        let ports = self.publish(id, ip, specs, partial).await?;

        let spec = InitSpec {
            hostname: hostname.to_owned(),
            cmd: req.cmd.clone(),
            env: req.env.clone(),
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
            network: Some(NetworkRecord {
                ip,
                mac,
                host_ifname,
                host_ifindex,
                host_mac,
                netns_cookie,
            }),
            ports,
        };
        self.store.save(&record).map_err(|e| internal(&e))?;
        Ok(record)
    }

    /// Undoes whatever `create` got to, every step attempted.
    async fn rollback(&mut self, id: &str, partial: Partial) {
        if let Some(pid) = partial.monitor_pid {
            // Killing the monitor kills the workload too (PDEATHSIG), and its
            // namespaces go with them.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid as i32), None);
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
        if let Some(ip) = partial.ip {
            if let Err(e) = self.datapath.remove_endpoint(ip) {
                warn!(%id, %e, "rollback: cannot remove endpoint");
            }
            self.ipam.release(ip);
        }
        if partial.dir
            && let Err(e) = self.store.remove(id)
        {
            warn!(%id, %e, "rollback: cannot remove state");
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
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
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
        let Some(net) = record.network.take() else {
            return;
        };
        if let Err(e) = self.datapath.remove_endpoint(net.ip) {
            warn!(id = %record.id, %e, "cannot remove endpoint");
        }
        if let Err(e) = self.datapath.remove_netns(net.netns_cookie) {
            warn!(id = %record.id, %e, "cannot forget the namespace");
        }
        self.datapath.forget(&net.host_ifname);
        // The veth normally dies with the container's namespace, but that
        // happens asynchronously in the kernel: delete it now, by name, so
        // that it is gone when `rm` returns.
        match self.netlink.index_of(&net.host_ifname).await {
            Ok(Some(index)) => {
                if let Err(e) = self.netlink.delete(index).await {
                    warn!(id = %record.id, %e, "cannot delete veth");
                }
            }
            Ok(None) => {}
            Err(e) => warn!(id = %record.id, %e, "cannot look up veth"),
        }
        self.ipam.release(net.ip);
    }
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
    let (records, _) = store.load_all()?;
    for record in &records {
        if let Some(monitor) = record.monitor_alive() {
            // The workload dies with its monitor (PDEATHSIG).
            let _ = kill(Pid::from_raw(monitor as i32), Signal::SIGKILL);
        }
        if let Some(net) = &record.network {
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
    for uplink in uplinks(config, &netlink).await? {
        match aya::programs::tc::qdisc_detach_program(
            &uplink,
            aya::programs::TcAttachType::Ingress,
            datapath::PROG_UPLINK_INGRESS,
        ) {
            Ok(()) => info!(%uplink, "detached from uplink"),
            Err(aya::programs::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => failures.push(format!("detach from {uplink}: {e}")),
        }
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
