//! `ferryd`: the ferry daemon.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use ferry::{
    config::{self, Config},
    container, daemon,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "ferry daemon: containers on an eBPF datapath")]
struct Args {
    /// Subnet containers get their addresses from (in a cluster: the
    /// block this node claims).
    #[arg(long, default_value = config::DEFAULT_SUBNET, conflicts_with = "cluster")]
    subnet: String,
    /// Join a cluster whose state etcd keeps: etcd://HOST:PORT[,HOST:PORT...]
    /// or a file holding that. Containers of the default network on every
    /// node then reach each other by their own addresses.
    #[arg(long, env = "FERRY_CLUSTER", value_name = "etcd://HOST:PORT,...|FILE")]
    cluster: Option<String>,
    /// This node's name in the cluster (default: the host name).
    #[arg(long, requires = "cluster")]
    node_name: Option<String>,
    /// The cluster's pool of container addresses.
    #[arg(long, default_value = config::DEFAULT_CLUSTER_POOL)]
    cluster_pool: String,
    /// Prefix length of the block each node claims from the pool.
    #[arg(long, default_value_t = config::DEFAULT_CLUSTER_BLOCK, value_parser = clap::value_parser!(u8).range(8..=30))]
    cluster_block: u8,
    /// Seconds a node stays a member without renewing its lease: how soon
    /// the others forget a dead node.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=3600))]
    cluster_lease_ttl: u64,
    /// The address other nodes reach this one at (default: the first
    /// uplink's first IPv4 address).
    #[arg(long, requires = "cluster")]
    cluster_address: Option<std::net::Ipv4Addr>,
    /// How other members are reached: auto (natively on a connected
    /// subnet, else VXLAN), native, vxlan. With a tunnel possible,
    /// containers' MTU leaves room for its header.
    #[arg(long, value_enum, default_value_t = config::ClusterRouting::Auto)]
    cluster_routing: config::ClusterRouting,
    /// Persistent state (containers, logs).
    #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Run-time state (lock file).
    #[arg(long, default_value = config::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Where maps and programs are pinned (on a bpf filesystem).
    #[arg(long, default_value = config::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// The API socket.
    #[arg(long, short = 'H', default_value = config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Interface where published ports are served (repeatable; default: the
    /// interfaces of the default route).
    #[arg(long = "uplink")]
    uplinks: Vec<String>,
    /// cgroup2 directory for the socket hooks (`localhost:PORT` for every
    /// process below it; default: the cgroup2 mount).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Where containers' cgroups go, relative to each cgroup hierarchy (for
    /// cgroup v2, relative to the --cgroup directory).
    #[arg(long, default_value = config::DEFAULT_CGROUP_PARENT)]
    cgroup_parent: String,
    /// Conntrack idle timeout, NAME=SECONDS (repeatable): tcp_established
    /// (21600), tcp_syn (60), tcp_syn_recv (60), tcp_fin_wait (a FIN one
    /// way, 120), tcp_closing (FIN both ways or RST, 10),
    /// udp_unreplied (30), udp (answered, 30), udp_stream (assured, 120),
    /// icmp (30).
    #[arg(long = "ct-timeout")]
    ct_timeouts: Vec<String>,
    /// Capacity of the assured conntrack table `ct`, in entries (two per
    /// flow). Nothing is evicted from it; when it is full, new flows stay
    /// in `ct_new` (counted).
    #[arg(long, default_value_t = ferry_common::MAX_CT, value_parser = clap::value_parser!(u32).range(1..))]
    ct_max: u32,
    /// Capacity of `ct_new`, the conntrack table of flows not yet assured
    /// (half-open TCP, unanswered UDP, closing), in entries (two per
    /// flow). When it is full the least recently used are evicted and
    /// counted; a flood fills this one, never `ct`.
    #[arg(long, default_value_t = ferry_common::MAX_CT_NEW, value_parser = clap::value_parser!(u32).range(2..))]
    ct_new_max: u32,
    /// Capacity of the endpoint map: containers on the datapath at once.
    /// A run beyond it is refused with an error saying so.
    #[arg(long, default_value_t = ferry_common::MAX_ENDPOINTS, value_parser = clap::value_parser!(u32).range(1..))]
    endpoint_max: u32,
    /// Capacity of the port map: published host ports (per address and
    /// protocol) at once. A publish beyond it is refused with an error.
    #[arg(long, default_value_t = ferry_common::MAX_PORTMAPS, value_parser = clap::value_parser!(u32).range(1..))]
    port_max: u32,
    /// XDP prefilter on the uplinks: auto attaches it where it does not cost
    /// GRO and offloads (not on veth or virtio_net uplinks).
    #[arg(long, value_enum, default_value_t = config::XdpPrefilter::Auto)]
    xdp_prefilter: config::XdpPrefilter,
    /// Seconds between conntrack GC runs.
    #[arg(long, default_value_t = 10)]
    ct_gc_interval: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics; a bare PORT
    /// listens on loopback only (127.0.0.1:PORT).
    #[arg(long, value_name = "[IP:]PORT", value_parser = config::parse_metrics_addr)]
    metrics: Option<std::net::SocketAddr>,
    /// Serve Docker's remote network and IPAM driver API here (`docker
    /// network create -d ferry --ipam-driver ferry`); "" for none.
    #[arg(long, value_name = "PATH", default_value = ferry::docker::DEFAULT_SOCKET)]
    docker_plugin: PathBuf,
    /// Resolver the embedded DNS of user-defined networks forwards other
    /// names to, IP[:PORT] (repeatable; default: the nameservers of the
    /// host's /etc/resolv.conf).
    #[arg(long = "dns-upstream", value_name = "IP[:PORT]", value_parser = parse_upstream)]
    dns_upstreams: Vec<std::net::SocketAddr>,
    /// A registry (HOST[:PORT]) `ferry pull` speaks plain HTTP to
    /// (repeatable; loopback registries always are).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// Root in containers is a range of unprivileged host ids: `default`
    /// (the user ferryremap and its ranges, created if missing) or
    /// USER[:GROUP] with ranges in /etc/subuid and /etc/subgid.
    #[arg(long, value_name = "default|USER[:GROUP]")]
    userns_remap: Option<String>,
    /// Group allowed to use the API socket besides root.
    #[arg(long)]
    group: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Remove every container, attachment, pin and state file of this
    /// configuration (ferryd must be stopped).
    Reset,
}

fn main() -> ExitCode {
    // The container init stage is this same binary, re-executed.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == container::INIT_ARG)
    {
        container::init_main();
    }
    // args_os: a non-UTF-8 argument (a path) must reach clap's error, not
    // panic here.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == container::EXEC_ARG)
    {
        container::exec_main();
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == ferry::userns::HOLDER_ARG)
    {
        ferry::userns::holder_main();
    }
    let args = Args::parse();
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferryd: {}", ferry::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// `IP` (port 53) or `IP:PORT`.
fn parse_upstream(value: &str) -> Result<std::net::SocketAddr, String> {
    value
        .parse::<std::net::SocketAddr>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        .map_err(|_| format!("{value:?} is not IP or IP:PORT"))
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut ct_timeouts = ferry::conntrack::Timeouts::default();
    for spec in &args.ct_timeouts {
        ct_timeouts.set(spec).map_err(anyhow::Error::msg)?;
    }
    let config = Config {
        ct_timeouts,
        ct_gc_interval: std::time::Duration::from_secs(args.ct_gc_interval.max(1)),
        subnet: ferry::network::parse_subnet(&args.subnet)?,
        socket_gid: args.group.as_deref().map(config::parse_group).transpose()?,
        state_dir: args.state_dir,
        run_dir: args.run_dir,
        pin_dir: args.pin_dir,
        socket: args.socket,
        uplinks: args.uplinks,
        cgroup: args.cgroup.unwrap_or_else(config::default_cgroup),
        cgroup_parent: args.cgroup_parent,
        metrics_addr: args.metrics,
        docker_plugin: (!args.docker_plugin.as_os_str().is_empty()).then_some(args.docker_plugin),
        dns_upstreams: args.dns_upstreams,
        insecure_registries: args.insecure_registries,
        userns_remap: args.userns_remap,
        map_sizes: ferry::datapath::MapSizes {
            ct: args.ct_max,
            ct_new: args.ct_new_max,
            endpoints: args.endpoint_max,
            ports: args.port_max,
        },
        xdp_prefilter: args.xdp_prefilter,
        cluster: match &args.cluster {
            Some(spec) => Some(config::ClusterConfig {
                endpoints: config::parse_cluster(spec).map_err(anyhow::Error::msg)?,
                node: match args.node_name {
                    Some(name) => name,
                    None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
                },
                pool: ferry::network::parse_subnet(&args.cluster_pool)?,
                block_len: args.cluster_block,
                lease_ttl: std::time::Duration::from_secs(args.cluster_lease_ttl),
                address: args.cluster_address,
                routing: args.cluster_routing.into(),
            }),
            None => None,
        },
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match args.command {
            None => daemon::serve(config).await,
            Some(Command::Reset) => daemon::reset(&config).await,
        }
    })
}
