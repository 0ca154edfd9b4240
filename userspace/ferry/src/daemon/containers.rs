//! Creating a container: the request checked into a plan, the monitor,
//! cgroups, network (through the agent) and root file system made in
//! order, every step undone when a later one fails; and its end.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use ferry_net::agent::{self, AttachSpec, Link, Placement};
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::waitpid,
    },
    unistd::Pid,
};
use tracing::{info, warn};

use super::{
    Daemon, Inner,
    control::parse_signal,
    images::{WithImage, apply_image},
    names,
    networks::endpoint_address,
    now, random_id,
};
use crate::{
    api::{ApiError, RunRequest},
    attach::StdioSpec,
    cgroup::CgroupError,
    container::{self, ExitRecord, InitSpec, MonitorNet, Privileges},
    dns, netns,
    network::NetworkDef,
    portmap::PublishSpec,
    rootfs::{Bind, Lower, RootfsSpec},
    seccomp::Profile,
    state::{ContainerRecord, Status, process_start_time},
    validate,
};

/// Pieces of a container being created, undone in reverse on failure.
#[derive(Default)]
pub(super) struct Partial {
    monitor_pid: Option<u32>,
    dir: bool,
    cgroup: bool,
    /// Its network, undone by the agent.
    pub(super) net: agent::Partial,
}

/// A run request, checked before anything is created.
struct Plan {
    specs: Vec<PublishSpec>,
    binds: Vec<Bind>,
    lower: Lower,
    /// `None`: unconfined.
    seccomp: Option<Profile>,
    caps: Vec<u32>,
    /// The image's ID and `StopSignal`; empty without an image.
    image_id: String,
    stop_signal: String,
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
    pub(super) fn of(
        req: &RunRequest,
        inner: &Inner,
        image: Option<(ferry_image::ImageRecord, Lower)>,
    ) -> Result<Self, ApiError> {
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
        let seccomp = seccomp_of(&req.host_config)?;
        let caps = caps_of(&req.host_config)?;
        let (image_id, stop_signal, image) = match image {
            Some((record, lower)) => (record.id, record.config.stop_signal, Some(lower)),
            None => (String::new(), String::new(), None),
        };
        if !stop_signal.is_empty() {
            parse_signal(&stop_signal)?;
        }
        let lower = match (image, req.host_config.rootfs.as_str()) {
            (Some(layers), _) => layers,
            (None, "" | "host") => Lower::Host,
            (None, dir) => {
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
                Lower::Dir(path.to_owned())
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
                    let network = inner.agent.networks.find(name)?.clone();
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
            lower,
            seccomp,
            caps,
            image_id,
            stop_signal,
            network,
            workdir,
        })
    }
}

/// The container's capabilities from `--cap-add`, `--cap-drop` and
/// `--privileged`.
pub(super) fn caps_of(host_config: &crate::api::HostConfig) -> Result<Vec<u32>, ApiError> {
    ferry_runtime::caps::resolve(
        host_config.privileged,
        &host_config.cap_add,
        &host_config.cap_drop,
    )
    .map_err(ApiError::BadRequest)
}

/// The container's seccomp profile from its `--security-opt`s: ferry's
/// default unless `seccomp=unconfined` or a profile is given (or
/// `--privileged`, which drops it unless a profile is given, as Docker).
pub(super) fn seccomp_of(
    host_config: &crate::api::HostConfig,
) -> Result<Option<Profile>, ApiError> {
    let bad = ApiError::BadRequest;
    let mut profile = if host_config.privileged {
        None
    } else {
        Some(Profile::default_profile().map_err(ApiError::Internal)?)
    };
    for opt in &host_config.security_opt {
        let (key, value) = opt
            .split_once(['=', ':'])
            .map_or((opt.as_str(), ""), |(k, v)| (k, v));
        match (key, value) {
            ("seccomp", "unconfined") => profile = None,
            ("seccomp", json) => {
                profile = Some(
                    Profile::parse(json)
                        .map_err(|e| bad(format!("--security-opt seccomp: {e}")))?,
                );
            }
            ("no-new-privileges", "" | "true") => {}
            _ => {
                return Err(bad(format!(
                    "unsupported security option {opt:?}: ferry takes seccomp=unconfined, \
                     seccomp=PROFILE and no-new-privileges (always on)"
                )));
            }
        }
    }
    Ok(profile)
}

impl Daemon {
    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<ContainerRecord, ApiError> {
        let mut inner = self.inner.lock().await;
        let WithImage { req, image } = apply_image(&self.images, req)?;
        let plan = Plan::of(&req, &inner, image)?;
        let id = random_id()?;
        let name = match &req.name {
            Some(name) => name.clone(),
            None => names::generate(|n| inner.containers.values().any(|c| c.name == n))?,
        };
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
}

impl Inner {
    /// Records a container's exit and frees what it held: the status the
    /// monitor wrote (if the monitor itself died first, the workload died
    /// with it by SIGKILL), OOM kills counted by its cgroup; then its
    /// cgroup and network go, and the container too if it ran with --rm.
    pub(super) async fn finish(&mut self, id: &str, monitor_status: Option<i32>) {
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
        let monitor_net_own = !matches!(plan.network, NetPlan::Host) && joined_netns.is_none();
        let monitor_net = match (&plan.network, &joined_netns) {
            (NetPlan::Host, _) => MonitorNet::Host,
            (_, Some(ns)) => MonitorNet::Join(ns.as_fd()),
            _ => MonitorNet::New,
        };
        let monitor = container::spawn_monitor(
            &self.store.monitor_log_path(id),
            monitor_net,
            self.userns.as_ref().map(|(_, ns)| ns.as_fd()),
        )
        .map_err(|e| internal(&e))?;
        partial.monitor_pid = Some(monitor.pid);
        let monitor_start_time = process_start_time(monitor.pid);

        let (network, ports) = match &plan.network {
            NetPlan::Bridge {
                network,
                ip,
                aliases,
            } => {
                let ns = netns::of_pid(monitor.pid).map_err(|e| internal(&e))?;
                let spec = AttachSpec {
                    owner: id,
                    placement: Placement::Netns(ns.as_fd()),
                    ip_held: false,
                    network,
                    ip: *ip,
                    mac: None,
                    link: &Link::first(id, "eth0"),
                };
                let mut net = self.agent.attach(&spec, &mut partial.net).await?;
                net.aliases.clone_from(aliases);
                let names = [name.to_owned(), id[..12].to_owned()];
                self.agent
                    .join_dns(id, &names, &net, Some(&mut partial.net));
                if !network.is_default() {
                    self.agent
                        .serve_dns(id, ns, &req.host_config.dns)
                        .map_err(|e| internal(&format!("cannot serve the container's DNS: {e}")))?;
                }
                let owner = format!("container {name}");
                let ports = self
                    .agent
                    .publish(
                        id,
                        &owner,
                        net.ip,
                        &plan.specs,
                        ferry_net::portmap::Hold::Socket,
                        &mut partial.net,
                    )
                    .await?;
                (Some(net), ports)
            }
            NetPlan::None => {
                let ns = netns::of_pid(monitor.pid).map_err(|e| internal(&e))?;
                let (inside, _) = agent::netlink_in(ns.as_fd())?;
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
            privileges: Privileges {
                user: req.user.clone(),
                seccomp: plan.seccomp.clone(),
                caps: plan.caps.clone(),
            },
            stdio: StdioSpec {
                tty: req.tty,
                open_stdin: req.open_stdin,
                console_size: req.console_size.map(|[rows, cols]| (rows, cols)),
            },
            cgroup_procs: self.cgroups.procs_files(id),
            log: self.store.log_path(id),
            attach_socket: Some(self.store.attach_path(id)),
            userns: self.userns.as_ref().map(|(map, _)| *map),
            // Docker's defaults for a network namespace of the container's
            // own (never the host's): any user may bind low ports and ping.
            sysctls: match monitor_net_own {
                true => vec![
                    ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
                    ("net.ipv4.ping_group_range".into(), "0 2147483647".into()),
                ],
                false => Vec::new(),
            },
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
            image: req.image.clone(),
            image_id: plan.image_id.clone(),
            user: req.user.clone(),
            stop_signal: plan.stop_signal.clone(),
            tty: req.tty,
            open_stdin: req.open_stdin,
            userns: self.userns.as_ref().map(|(map, _)| *map),
        };
        self.store.save(&record).map_err(|e| internal(&e))?;
        Ok(record)
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
            self.store.rootfs_upper(id),
            layers.join("work"),
            layers.join("merged"),
        );
        let etc = dir.join("etc");
        // The lower layer of an image without layers.
        let empty = layers.join("empty");
        for d in [&upper, &work, &merged, &etc, &empty] {
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
        // Container root owns its own layer and files: the root directory
        // it sees is the upper one's.
        if let Some((map, _)) = &self.userns {
            let (uid, gid) = (
                Some(nix::unistd::Uid::from_raw(map.uid)),
                Some(nix::unistd::Gid::from_raw(map.gid)),
            );
            for path in std::iter::once(&upper).chain(files.iter().map(|f| &f.source)) {
                nix::unistd::chown(path, uid, gid).map_err(io::Error::from)?;
            }
        }
        Ok(RootfsSpec {
            lower: plan.lower.clone(),
            upper,
            work,
            merged,
            read_only: req.host_config.readonly_rootfs,
            binds: plan.binds.clone(),
            files,
            hidden: self.hidden.clone(),
            workdir: plan.workdir.clone(),
            privileged: req.host_config.privileged,
        })
    }

    /// Undoes whatever `create` got to, every step attempted.
    pub(super) async fn rollback(&mut self, id: &str, partial: Partial) {
        if let Some(pid) = partial.monitor_pid {
            // Killing the monitor kills the workload too (PDEATHSIG), and its
            // namespaces go with them.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid as i32), None);
        }
        if partial.cgroup {
            self.remove_cgroups(id).await;
        }
        self.agent.rollback(id, partial.net).await;
        if partial.dir
            && let Err(e) = self.store.remove(id)
        {
            warn!(%id, %e, "rollback: cannot remove state");
        }
    }

    /// Removes a container's cgroups, waiting (off the runtime's threads)
    /// for its last processes to leave them.
    pub(super) async fn remove_cgroups(&self, id: &str) {
        let cgroups = self.cgroups.clone();
        let owned = id.to_owned();
        match tokio::task::spawn_blocking(move || cgroups.remove(&owned)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(%id, %e, "cannot remove the cgroups"),
            Err(e) => warn!(%id, %e, "cannot remove the cgroups"),
        }
    }

    /// Removes a container's network: map entries, veth (its route and
    /// neighbour go with it), address. Idempotent.
    pub(super) async fn teardown_network(&mut self, record: &mut ContainerRecord) {
        let ports = std::mem::take(&mut record.ports);
        self.agent.unpublish(&record.id, &ports);
        self.agent.stop_dns(&record.id);
        for net in std::mem::take(&mut record.extra_networks) {
            self.agent.detach(&record.id, &net, false).await;
        }
        if let Some(net) = record.network.take() {
            self.agent.detach(&record.id, &net, true).await;
        }
    }
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
