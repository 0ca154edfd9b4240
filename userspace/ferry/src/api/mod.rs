//! The HTTP/JSON API on ferryd's unix socket, shaped like Docker's Engine
//! API where that fits. The types here are shared with the `ferry` client.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, FromRequest, FromRequestParts, Path, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::{Deserialize, Serialize};

mod endpoints;

use crate::{
    daemon::Daemon,
    link::mac_to_string,
    portmap::PortMapping,
    state::{ContainerRecord, Status},
};

pub const API_VERSION: &str = "0.1";

/// Largest request body ferryd reads. A run request with thousands of
/// publishes, binds and environment entries fits several times over.
pub const MAX_BODY: usize = 1 << 20;

/// A JSON request body; malformed, mistyped or oversized bodies are refused
/// with an [`ApiError`] naming the problem.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct Body<T>(pub(crate) T);

/// A query string, refused like [`Body`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub(crate) T);

/// `POST /containers/run`: create and start a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Publish specs as `docker run -p` takes them.
    #[serde(default)]
    pub publish: Vec<String>,
    pub cmd: Vec<String>,
    /// The workload's working directory (default `/`).
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub host_config: HostConfig,
    /// The container's address and aliases on its network (user-defined
    /// networks only; Docker's `EndpointsConfig`).
    #[serde(default)]
    pub endpoint: EndpointConfig,
}

/// `--ip` and `--network-alias`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointConfig {
    #[serde(default, rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// `POST /networks/create`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkCreate {
    pub name: String,
    /// CIDR; empty: a free /24.
    #[serde(default)]
    pub subnet: String,
    #[serde(default)]
    pub internal: bool,
    /// Driver options: `com.docker.network.bridge.enable_icc`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// `POST /networks/{id}/connect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkConnect {
    pub container: String,
    #[serde(default)]
    pub endpoint_config: EndpointConfig,
}

/// `POST /networks/{id}/disconnect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkDisconnect {
    pub container: String,
}

/// `ferry network inspect` / `GET /networks/{id}`, in Docker's shape.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkJson {
    pub name: String,
    pub id: String,
    pub created: u64,
    pub driver: String,
    pub internal: bool,
    #[serde(rename = "IPAM")]
    pub ipam: IpamJson,
    pub options: BTreeMap<String, String>,
    /// Running containers on it, by ID.
    pub containers: BTreeMap<String, NetworkMember>,
    /// ferry's addition: the datapath's number for the network.
    pub net_id: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamJson {
    pub config: Vec<IpamConfigJson>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfigJson {
    pub subnet: String,
    pub gateway: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkMember {
    pub name: String,
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    pub mac_address: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// One endpoint on a network: a running container's attachment or an
/// endpoint of another engine.
pub struct Member<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub net: &'a crate::state::NetworkRecord,
}

impl<'a> Member<'a> {
    pub fn of(id: &'a str, name: &'a str, net: &'a crate::state::NetworkRecord) -> Self {
        Self { id, name, net }
    }
}

impl NetworkJson {
    /// A network and its `members`.
    pub fn of(def: &crate::network::NetworkDef, members: &[Member<'_>]) -> Self {
        let gateway = std::net::Ipv4Addr::from(ferry_common::GATEWAY_V4).to_string();
        Self {
            name: def.name.clone(),
            id: def.id.clone(),
            created: def.created,
            driver: "ferry".into(),
            internal: def.internal,
            ipam: IpamJson {
                config: vec![IpamConfigJson {
                    subnet: def.subnet.to_string(),
                    gateway,
                }],
            },
            options: BTreeMap::from([(crate::network::OPT_ICC.to_owned(), def.icc.to_string())]),
            containers: members
                .iter()
                .map(|m| {
                    (
                        m.id.to_owned(),
                        NetworkMember {
                            name: m.name.to_owned(),
                            ipv4_address: format!("{}/{}", m.net.ip, def.subnet.prefix_len()),
                            mac_address: mac_to_string(&m.net.mac),
                            aliases: m.net.aliases.clone(),
                        },
                    )
                })
                .collect(),
            net_id: def.net_id,
        }
    }
}

/// How the container is run: limits, filesystem, network, clean-up
/// (Docker's `HostConfig`, where ferry supports a field).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    #[serde(flatten)]
    pub resources: crate::cgroup::Resources,
    /// `HOST:CONTAINER[:ro]` bind mounts.
    #[serde(default)]
    pub binds: Vec<String>,
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// Remove the container when it exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// `bridge` (default), `host`, `none` or `container:<name|id>`.
    #[serde(default)]
    pub network_mode: String,
    /// ferry's addition: a root filesystem directory to run instead of the
    /// overlay of the host's root.
    #[serde(default)]
    pub rootfs: String,
    /// `--dns`: resolvers for the container (on a user-defined network,
    /// the ones its embedded DNS forwards to).
    #[serde(default)]
    pub dns: Vec<String>,
    /// `--add-host NAME:IP` lines for the container's /etc/hosts.
    #[serde(default)]
    pub extra_hosts: Vec<String>,
}

/// `POST /containers/{id}/exec`: a command to run in a running container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    /// Added to the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Default: the container's working directory.
    #[serde(default)]
    pub working_dir: String,
}

/// One host binding of a published port (Docker's `PortBinding`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    pub host_ip: String,
    pub host_port: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    pub status: String,
    pub running: bool,
    pub pid: u32,
    pub exit_code: i32,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub finished_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    pub hostname: String,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSettings {
    #[serde(default, rename = "NetworkID")]
    pub network_id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    pub gateway: String,
    pub mac_address: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettings {
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    pub gateway: String,
    pub mac_address: String,
    pub networks: BTreeMap<String, EndpointSettings>,
    /// `"80/tcp" -> [{HostIp, HostPort}]`, as Docker shows published ports.
    pub ports: BTreeMap<String, Vec<PortBinding>>,
}

/// What ferry adds to Docker's inspect shape: the host side of the wiring.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FerrySettings {
    pub host_veth: String,
    pub host_veth_ifindex: u32,
    pub host_veth_mac: String,
    pub monitor_pid: u32,
    /// The datapath programs on the host veth, e.g. `from_container (tc ingress)`.
    #[serde(default)]
    pub programs: Vec<String>,
    /// The container's datapath counters.
    #[serde(default)]
    pub counters: NetCounters,
    /// Traffic through the uplink of each published port, by
    /// `hostIP:hostPort/proto` (rx: to the container, tx: its replies).
    #[serde(default)]
    pub port_counters: BTreeMap<String, NetCounters>,
}

/// Packets and bytes a container sent (tx) and received (rx), counted by
/// the datapath.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl From<ferry_common::EndpointStats> for NetCounters {
    fn from(s: ferry_common::EndpointStats) -> Self {
        Self {
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
        }
    }
}

/// `ferry inspect` / `GET /containers/{id}/json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerJson {
    pub id: String,
    pub name: String,
    pub created: u64,
    pub state: ContainerState,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub network_settings: NetworkSettings,
    pub ferry: FerrySettings,
}

impl From<&ContainerRecord> for ContainerJson {
    fn from(r: &ContainerRecord) -> Self {
        let gateway = std::net::Ipv4Addr::from(ferry_common::GATEWAY_V4).to_string();
        let (network_settings, ferry) = match &r.network {
            Some(n) => {
                let endpoint = |n: &crate::state::NetworkRecord| EndpointSettings {
                    // Filled in by the daemon, which knows the networks.
                    network_id: String::new(),
                    aliases: n.aliases.clone(),
                    ip_address: n.ip.to_string(),
                    ip_prefix_len: 32,
                    gateway: gateway.clone(),
                    mac_address: mac_to_string(&n.mac),
                };
                (
                    NetworkSettings {
                        ip_address: n.ip.to_string(),
                        gateway: gateway.clone(),
                        mac_address: mac_to_string(&n.mac),
                        networks: r
                            .attachments()
                            .map(|a| (a.network.clone(), endpoint(a)))
                            .collect(),
                        ports: port_bindings(&r.ports),
                    },
                    FerrySettings {
                        host_veth: n.host_ifname.clone(),
                        host_veth_ifindex: n.host_ifindex,
                        host_veth_mac: mac_to_string(&n.host_mac),
                        ..FerrySettings::default()
                    },
                )
            }
            None => (NetworkSettings::default(), FerrySettings::default()),
        };
        let ferry = FerrySettings {
            monitor_pid: r.monitor_pid.unwrap_or(0),
            ..ferry
        };
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            created: r.created,
            state: ContainerState {
                status: r.status.as_str().to_owned(),
                running: r.status == Status::Running,
                pid: r.pid.unwrap_or(0),
                exit_code: r.exit_code.unwrap_or(0),
                oom_killed: r.oom_killed,
                finished_at: r.finished.unwrap_or(0),
            },
            config: ContainerConfig {
                hostname: r.hostname.clone(),
                env: r.env.clone(),
                cmd: r.cmd.clone(),
                working_dir: r.working_dir.clone(),
            },
            host_config: r.host_config.clone(),
            network_settings,
            ferry,
        }
    }
}

fn port_bindings(ports: &[PortMapping]) -> BTreeMap<String, Vec<PortBinding>> {
    let mut out: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
    for m in ports {
        out.entry(format!("{}/{}", m.container_port, m.proto))
            .or_default()
            .push(PortBinding {
                host_ip: m
                    .host_ip
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
                    .to_string(),
                host_port: m.host_port.to_string(),
            });
    }
    out
}

/// `GET /containers/{id}/stats`: datapath counters and cgroup usage of
/// one container, read at `read_ns` (CLOCK_MONOTONIC nanoseconds), so that
/// two samples give a CPU percentage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Stats {
    #[serde(flatten)]
    pub net: NetCounters,
    #[serde(flatten)]
    pub usage: crate::cgroup::Usage,
    pub read_ns: u64,
}

/// `POST /containers/{id}/wait`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WaitResponse {
    pub status_code: i32,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
}

/// `GET /datapath`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DatapathJson {
    pub pin_dir: String,
    pub conntrack: ConntrackJson,
    /// Whether the programs log drops and new flows (`ferry debug datapath`).
    #[serde(default)]
    pub debug_log: bool,
    pub endpoints: usize,
    pub programs: Vec<String>,
    /// Where each program is attached.
    pub attachments: Vec<AttachmentJson>,
    /// Fill level of every map.
    pub maps: Vec<MapJson>,
    /// Drop counters by reason name.
    pub drops: BTreeMap<String, u64>,
}

/// Conntrack entries now, and since the maps were created. Two tables:
/// `ct_new` (flows not yet assured, an LRU map) and `ct` (assured flows,
/// never evicted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConntrackJson {
    /// Entries in both tables (two per flow).
    pub entries: u64,
    /// Of which assured (`ct`).
    pub assured: u64,
    /// Entries that came into `ct_new`: new flows, and flows that began to
    /// close.
    pub created: u64,
    /// Entries moved into `ct` when their flow was assured.
    pub promoted: u64,
    /// Entries ferryd removed (GC, flush), both tables.
    pub removed: u64,
    /// Entries evicted, both tables.
    pub evicted: u64,
    /// Evicted from `ct_new`: half-open, unanswered or closing flows.
    pub evicted_unassured: u64,
    /// Evicted from `ct`: none by design (a hash map evicts nothing).
    pub evicted_assured: u64,
    /// Promotions refused because `ct` was full (those flows stayed in
    /// `ct_new`).
    pub assured_full: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttachmentJson {
    /// Interface, or cgroup directory for the socket hooks.
    pub target: String,
    pub program: String,
    /// `tc ingress`, `tc egress`, `xdp`, `cgroup`.
    pub hook: String,
    /// For XDP, as the kernel reports it: `native`, `generic`, ...
    #[serde(default)]
    pub mode: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MapJson {
    pub name: String,
    #[serde(rename = "Type")]
    pub kind: String,
    pub entries: usize,
    pub capacity: u32,
}

pub use ferry_api::ErrorBody;

/// An API failure: the HTTP status says which kind, the message says what.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// A datapath map has no room left.
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Internal(_)) {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            message: self.to_string(),
        };
        (self.status(), Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::TooLarge(format!(
                "request body larger than the limit of {}",
                crate::validate::Bytes(MAX_BODY)
            ))
        } else {
            Self::BadRequest(format!("invalid request body: {}", e.body_text()))
        }
    }
}

impl From<crate::validate::InvalidInput> for ApiError {
    fn from(e: crate::validate::InvalidInput) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<ferry_net::agent::AgentError> for ApiError {
    fn from(e: ferry_net::agent::AgentError) -> Self {
        use ferry_net::agent::AgentError as E;
        match e {
            E::Invalid(m) => Self::BadRequest(m),
            E::NotFound(m) => Self::NotFound(m),
            E::Conflict(m) => Self::Conflict(m),
            E::Exhausted(m) => Self::Unavailable(m),
            E::Full(m) => Self::Full(m),
            E::Internal(m) => Self::Internal(m),
        }
    }
}

impl From<crate::network::NetworkError> for ApiError {
    fn from(e: crate::network::NetworkError) -> Self {
        ferry_net::agent::AgentError::from(e).into()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::BadRequest(format!("invalid query: {}", e.body_text()))
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

#[derive(Debug, Deserialize)]
struct StopQuery {
    t: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ConntrackQuery {
    container: Option<String>,
    proto: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DebugQuery {
    on: bool,
}

#[derive(Debug, Deserialize)]
struct KillQuery {
    signal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    /// A number of lines, or `all`.
    tail: Option<String>,
    stdout: Option<bool>,
    stderr: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/_ping", get(|| async { "OK" }))
        .route("/version", get(|| async { Json(serde_json::json!({ "ApiVersion": API_VERSION, "Version": env!("CARGO_PKG_VERSION") })) }))
        .route("/containers/run", post(run))
        .route("/containers/json", get(list))
        .route("/containers/{id}/json", get(inspect))
        .route("/containers/{id}/stop", post(stop))
        .route("/containers/{id}/stats", get(stats))
        .route("/containers/{id}/wait", post(wait))
        .route("/containers/{id}/kill", post(kill))
        .route("/containers/{id}/logs", get(logs))
        .route("/containers/{id}/exec", post(exec))
        .route("/containers/{id}", delete(remove))
        .route("/datapath", get(datapath))
        .route("/datapath/debug", post(datapath_debug))
        .route("/conntrack", get(conntrack).delete(conntrack_flush))
        .route("/networks", get(network_list))
        .route("/networks/create", post(network_create))
        .route("/networks/{id}", get(network_inspect).delete(network_remove))
        .route("/networks/{id}/connect", post(network_connect))
        .route("/networks/{id}/disconnect", post(network_disconnect))
        .merge(endpoints::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&daemon),
            crate::metrics::count_requests,
        ))
        .with_state(daemon)
}

async fn run(
    State(d): State<Arc<Daemon>>,
    Body(req): Body<RunRequest>,
) -> Result<(StatusCode, Json<ContainerJson>), ApiError> {
    let record = d.run(req).await?;
    Ok((StatusCode::CREATED, Json(ContainerJson::from(&record))))
}

async fn list(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<ListQuery>,
) -> Json<Vec<ContainerJson>> {
    Json(
        d.list(q.all)
            .await
            .iter()
            .map(ContainerJson::from)
            .collect(),
    )
}

async fn inspect(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<Json<ContainerJson>, ApiError> {
    Ok(Json(d.inspect_json(&id).await?))
}

async fn stop(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> Result<StatusCode, ApiError> {
    d.stop(&id, q.t.unwrap_or(10)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    d.remove(&id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<Json<Stats>, ApiError> {
    Ok(Json(d.stats(&id).await?))
}

async fn datapath(State(d): State<Arc<Daemon>>) -> Result<Json<DatapathJson>, ApiError> {
    Ok(Json(d.datapath_info().await?))
}

async fn conntrack(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<ConntrackQuery>,
) -> Result<Json<Vec<crate::conntrack::Flow>>, ApiError> {
    Ok(Json(
        d.conntrack(q.container.as_deref(), q.proto.as_deref())
            .await?,
    ))
}

async fn conntrack_flush(
    State(d): State<Arc<Daemon>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::json!({ "Removed": d.conntrack_flush().await? }),
    ))
}

async fn wait(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<Json<WaitResponse>, ApiError> {
    Ok(Json(d.wait(&id).await?))
}

async fn kill(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(q): Query<KillQuery>,
) -> Result<StatusCode, ApiError> {
    d.kill(&id, q.signal.as_deref().unwrap_or("SIGKILL"))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The container's output in Docker's multiplexed framing (see `logs`);
/// with `follow`, the body stays open until the container has exited.
async fn logs(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let tail = match q.tail.as_deref() {
        None | Some("all") => None,
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| ApiError::BadRequest(format!("invalid --tail {n:?}")))?,
        ),
    };
    let streams = match (q.stdout, q.stderr) {
        (None, None) => (true, true),
        (out, err) => (out.unwrap_or(false), err.unwrap_or(false)),
    };
    let (path, exited) = d.log_source(&id).await?;
    let (tx, rx) = futures::channel::mpsc::channel(64);
    tokio::spawn(crate::logs::follow(
        path, exited, tail, q.follow, streams, tx,
    ));
    Ok(axum::body::Body::from_stream(rx).into_response())
}

/// Runs a command in the container; its output in the multiplexed framing,
/// ended by an exit frame (see `logs::EXIT_STREAM`).
async fn exec(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Body(req): Body<ExecRequest>,
) -> Result<Response, ApiError> {
    let rx = d.exec(&id, req).await?;
    Ok(axum::body::Body::from_stream(rx).into_response())
}

async fn datapath_debug(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<DebugQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::json!({ "DebugLog": d.set_debug_log(q.on).await? }),
    ))
}

async fn network_create(
    State(d): State<Arc<Daemon>>,
    Body(req): Body<NetworkCreate>,
) -> Result<(StatusCode, Json<NetworkJson>), ApiError> {
    Ok((StatusCode::CREATED, Json(d.network_create(req).await?)))
}

async fn network_list(State(d): State<Arc<Daemon>>) -> Json<Vec<NetworkJson>> {
    Json(d.network_list().await)
}

async fn network_inspect(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<Json<NetworkJson>, ApiError> {
    Ok(Json(d.network_inspect(&id).await?))
}

async fn network_remove(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    d.network_remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn network_connect(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Body(req): Body<NetworkConnect>,
) -> Result<StatusCode, ApiError> {
    d.network_connect(&id, req).await?;
    Ok(StatusCode::OK)
}

async fn network_disconnect(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Body(req): Body<NetworkDisconnect>,
) -> Result<StatusCode, ApiError> {
    d.network_disconnect(&id, req).await?;
    Ok(StatusCode::OK)
}
