//! `ferry run`: its flags, as `docker run` takes them, and the request
//! they make.

use ferry::{
    api::{EndpointConfig, HostConfig, RunRequest},
    cgroup::{Resources, parse_size},
    client::{Client, ClientError},
};
use hyper::{Method, StatusCode};

use crate::{NO_BODY, resolve_env};

/// `ferry run`'s flags, as `docker run` takes them.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Print help (`-h` is the hostname, as in Docker).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Run in the background and print the container ID.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Keep stdin open and send ours to it.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// A terminal for the container (raw mode here; ctrl-p ctrl-q detaches).
    #[arg(short = 't', long)]
    pub tty: bool,
    #[arg(long)]
    name: Option<String>,
    #[arg(long, short = 'h')]
    hostname: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Publish a port: [ip:][hostPort[-end]:]containerPort[-end][/tcp|udp]
    /// (repeatable).
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// Memory limit, e.g. 256m.
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// Memory plus swap limit (-1: unlimited swap; default: twice --memory).
    #[arg(long, allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// Number of CPUs, e.g. 1.5.
    #[arg(long)]
    cpus: Option<f64>,
    /// Relative CPU weight (default 1024).
    #[arg(short = 'c', long)]
    cpu_shares: Option<u64>,
    /// CPUs the container may use, e.g. 0-1.
    #[arg(long)]
    cpuset_cpus: Option<String>,
    /// Maximum number of processes.
    #[arg(long, allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// bridge (default), a user-defined network, host, none or
    /// container:<name|id>.
    #[arg(long, alias = "net")]
    network: Option<String>,
    /// The container's IPv4 address (user-defined networks only).
    #[arg(long)]
    ip: Option<String>,
    /// Another name of the container on its network (repeatable).
    #[arg(long = "network-alias")]
    network_aliases: Vec<String>,
    /// A DNS server for the container (repeatable).
    #[arg(long)]
    dns: Vec<String>,
    /// A NAME:IP line for /etc/hosts (repeatable).
    #[arg(long = "add-host")]
    add_hosts: Vec<String>,
    /// Bind mount HOST_PATH:CONTAINER_PATH[:ro] (repeatable).
    #[arg(short = 'v', long = "volume")]
    volumes: Vec<String>,
    /// Run this root filesystem directory in place, or `host` for an
    /// overlay of the host's root (what runs when no image is named).
    #[arg(long)]
    rootfs: Option<String>,
    /// Replace the image's entrypoint (and drop its Cmd); "" clears it.
    #[arg(long, allow_hyphen_values = true)]
    entrypoint: Option<String>,
    /// Run as USER[:GROUP] (names or ids), instead of the image's User.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Publish every port the image exposes on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// seccomp=unconfined, seccomp=FILE (a profile in Docker's format), or
    /// no-new-privileges (always on) (repeatable).
    #[arg(long = "security-opt")]
    security_opt: Vec<String>,
    /// Add a capability (NET_ADMIN, CAP_SYS_TIME, ALL) (repeatable).
    #[arg(long = "cap-add")]
    cap_add: Vec<String>,
    /// Drop a capability (NET_RAW, ALL) (repeatable).
    #[arg(long = "cap-drop")]
    cap_drop: Vec<String>,
    /// Every capability, no seccomp filter, no masked /proc paths, /sys
    /// writable.
    #[arg(long)]
    privileged: bool,
    /// Mount the container's root read-only.
    #[arg(long)]
    read_only: bool,
    /// IMAGE [ARG...] to run an image of the store, or COMMAND [ARG...] to
    /// run a command of the host's root.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE|COMMAND"
    )]
    cmd: Vec<String>,
}

/// The first word names an image when `--rootfs` is not given and the
/// store has an image by that name; otherwise it is a command of the host's
/// root, as before images existed.
async fn split_image(
    client: &Client,
    rootfs: Option<&str>,
    mut cmd: Vec<String>,
) -> anyhow::Result<(String, Vec<String>)> {
    let Some(first) = cmd.first().filter(|_| rootfs.is_none()) else {
        return Ok((String::new(), cmd));
    };
    let query = format!("/images/inspect?name={}", crate::images::encode(first));
    match client
        .call::<serde_json::Value>(Method::GET, &query, NO_BODY)
        .await
    {
        Ok(_) => Ok((cmd.remove(0), cmd)),
        Err(ClientError::Api { status, .. })
            if status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST =>
        {
            Ok((String::new(), cmd))
        }
        Err(e) => Err(e.into()),
    }
}

/// `seccomp=FILE` is sent as `seccomp=<the file's JSON>`, as Docker's
/// client does: the profile is the client's file, not ferryd's.
fn read_profile(opt: String) -> anyhow::Result<String> {
    match opt.split_once(['=', ':']) {
        Some(("seccomp", file)) if file != "unconfined" && !file.trim_start().starts_with('{') => {
            let json = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("--security-opt seccomp={file}: {e}"))?;
            Ok(format!("seccomp={json}"))
        }
        _ => Ok(opt),
    }
}

pub async fn request(client: &Client, args: RunArgs) -> anyhow::Result<RunRequest> {
    let mode = crate::attach::Mode {
        tty: args.tty,
        stdin: args.interactive,
    };
    if !args.detach {
        mode.check()?;
    }
    let RunArgs {
        detach,
        rm,
        interactive,
        tty,
        name,
        hostname,
        env,
        publish,
        workdir,
        memory,
        memory_swap,
        cpus,
        cpu_shares,
        cpuset_cpus,
        pids_limit,
        network,
        ip,
        network_aliases,
        dns,
        add_hosts,
        volumes,
        rootfs,
        read_only,
        entrypoint,
        user,
        publish_all,
        security_opt,
        cap_add,
        cap_drop,
        privileged,
        cmd,
        ..
    } = args;
    let memory = memory
        .map(|m| parse_size(&m).map_err(|e| anyhow::anyhow!("--memory: {e}")))
        .transpose()?
        .unwrap_or(0);
    let memory_swap = match memory_swap.as_deref() {
        None => 0,
        Some("-1") => -1,
        Some(v) => parse_size(v).map_err(|e| anyhow::anyhow!("--memory-swap: {e}"))? as i64,
    };
    let (image, cmd) = split_image(client, rootfs.as_deref(), cmd).await?;
    let req = RunRequest {
        name,
        hostname,
        env: resolve_env(env),
        publish,
        cmd,
        image,
        entrypoint: entrypoint.map(|e| if e.is_empty() { Vec::new() } else { vec![e] }),
        user: user.unwrap_or_default(),
        working_dir: workdir.unwrap_or_default(),
        host_config: HostConfig {
            resources: Resources {
                memory,
                memory_swap,
                nano_cpus: cpus.map_or(0, |c| (c * 1e9).round() as u64),
                cpu_shares: cpu_shares.unwrap_or(0),
                cpuset_cpus: cpuset_cpus.unwrap_or_default(),
                pids_limit: pids_limit.unwrap_or(0),
            },
            binds: volumes,
            readonly_rootfs: read_only,
            // Attached, the client removes the container once it
            // has the exit code; detached, ferryd does.
            auto_remove: rm && detach,
            network_mode: network.unwrap_or_default(),
            rootfs: rootfs.unwrap_or_default(),
            publish_all_ports: publish_all,
            cap_add,
            cap_drop,
            privileged,
            security_opt: security_opt
                .into_iter()
                .map(read_profile)
                .collect::<anyhow::Result<_>>()?,
            dns,
            extra_hosts: add_hosts,
        },
        endpoint: EndpointConfig {
            ipv4_address: ip.unwrap_or_default(),
            aliases: network_aliases,
        },
        tty,
        open_stdin: interactive,
        console_size: mode.size(),
    };
    Ok(req)
}
