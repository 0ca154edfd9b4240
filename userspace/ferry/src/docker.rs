//! ferry as a Docker network plugin: the remote NetworkDriver and
//! IpamDriver API (libnetwork's remote driver protocol, JSON over HTTP on a
//! unix socket Docker discovers as `/run/docker/plugins/ferry.sock`).
//! `docker network create -d ferry --ipam-driver ferry NAME`, then
//! `docker run --network NAME -p ...` publishes through ferry's datapath:
//! Join returns a gateway, so Docker writes no DNAT rule and starts no
//! docker-proxy for it.
//!
//! This is only the adapter: each call maps onto the daemon's Docker
//! methods (`daemon::docker`), which use the network agent.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    response::{IntoResponse, Response},
    routing::post,
};
use ferry_net::portmap::{HostPorts, Proto, PublishSpec};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::{api::ApiError, daemon::Daemon};

/// Where Docker looks for plugins by name.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/ferry.sock";

/// Docker's option keys.
const OPT_PORTMAP: &str = "com.docker.network.portmap";
const OPT_INTERNAL: &str = "com.docker.network.internal";
const GATEWAY_REQUEST: &str = "com.docker.network.gateway";

/// Binds the plugin socket (replacing a stale one) and serves it until
/// ferryd stops.
pub fn serve(daemon: Arc<Daemon>, path: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "the Docker plugin socket {} is served by another process",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("cannot remove stale {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| anyhow::anyhow!("chmod {}: {e}", path.display()))?;
    info!(socket = %path.display(), "Docker network and IPAM plugin served");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(daemon)).await {
            warn!(%e, "Docker plugin server stopped");
        }
    });
    Ok(path.to_owned())
}

fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/NetworkDriver.GetCapabilities", post(capabilities))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(oper_info))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(nothing))
        .route("/NetworkDriver.DiscoverNew", post(nothing))
        .route("/NetworkDriver.DiscoverDelete", post(nothing))
        .route("/NetworkDriver.ProgramExternalConnectivity", post(program))
        .route("/NetworkDriver.RevokeExternalConnectivity", post(revoke))
        .route("/IpamDriver.GetCapabilities", post(ipam_capabilities))
        .route("/IpamDriver.GetDefaultAddressSpaces", post(address_spaces))
        .route("/IpamDriver.RequestPool", post(request_pool))
        .route("/IpamDriver.ReleasePool", post(ipam_nothing))
        .route("/IpamDriver.RequestAddress", post(request_address))
        .route("/IpamDriver.ReleaseAddress", post(release_address))
        .with_state(daemon)
}

/// Docker's answers: JSON whatever the outcome, an error in `Err` for the
/// network driver and in `Error` for IPAM (each side reads only its own
/// key).
fn answer(result: Result<Value, ApiError>, error_key: &str) -> Response {
    let body = match result {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "Docker plugin call refused");
            json!({ error_key: e.to_string() })
        }
    };
    (
        [("content-type", "application/vnd.docker.plugins.v1+json")],
        Json(body),
    )
        .into_response()
}

/// Docker sends `application/vnd.docker.plugins.v1.2+json`, which axum's
/// JSON extractor refuses: the body is decoded here.
fn decode<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("bad request: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkReq {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default)]
    options: BTreeMap<String, Value>,
    #[serde(default, rename = "IPv4Data")]
    ipv4_data: Vec<Ipv4Data>,
    #[serde(default, rename = "IPv6Data")]
    ipv6_data: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ipv4Data {
    pool: String,
    #[serde(default)]
    gateway: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointReq {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    interface: Option<InterfaceReq>,
    #[serde(default)]
    sandbox_key: String,
    #[serde(default)]
    options: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InterfaceReq {
    #[serde(default)]
    address: String,
    #[serde(default, rename = "AddressIPv6")]
    address_ipv6: String,
    #[serde(default)]
    mac_address: String,
}

#[derive(Deserialize)]
struct PortBinding {
    #[serde(rename = "Proto")]
    proto: u8,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "HostIP", default)]
    host_ip: String,
    #[serde(rename = "HostPort", default)]
    host_port: u16,
    #[serde(rename = "HostPortEnd", default)]
    host_port_end: u16,
}

/// `10.1.2.3/24` or `10.1.2.3`.
fn address(text: &str) -> Result<Ipv4Addr, ApiError> {
    text.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid IPv4 address {text:?}")))
}

/// Docker's port map, as ferry publishes it.
fn publish_specs(options: &BTreeMap<String, Value>) -> Result<Vec<PublishSpec>, ApiError> {
    let Some(map) = options.get(OPT_PORTMAP).filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let bindings: Vec<PortBinding> = serde_json::from_value(map.clone())
        .map_err(|e| ApiError::BadRequest(format!("bad port map: {e}")))?;
    bindings
        .iter()
        .map(|b| {
            let proto = match b.proto {
                6 => Proto::Tcp,
                17 => Proto::Udp,
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "cannot publish port {} of IP protocol {other}: ferry publishes tcp and udp",
                        b.port
                    )));
                }
            };
            let host_ip = match b.host_ip.as_str() {
                "" => None,
                ip => Some(address(ip)?).filter(|ip| !ip.is_unspecified()),
            };
            let host_ports = match (b.host_port, b.host_port_end) {
                (0, _) => HostPorts::Any,
                (lo, hi) if hi > lo => HostPorts::Range(lo, hi),
                (p, _) => HostPorts::Range(p, p),
            };
            Ok(PublishSpec {
                host_ip,
                host_ports,
                container_ports: (b.port, b.port),
                proto,
            })
        })
        .collect()
}

async fn activate() -> Response {
    answer(
        Ok(json!({ "Implements": ["NetworkDriver", "IpamDriver"] })),
        "Err",
    )
}

async fn capabilities() -> Response {
    answer(
        Ok(json!({ "Scope": "local", "ConnectivityScope": "local" })),
        "Err",
    )
}

async fn nothing() -> Response {
    answer(Ok(json!({})), "Err")
}

async fn ipam_nothing() -> Response {
    answer(Ok(json!({})), "Error")
}

async fn create_network(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let result = async {
        let req: NetworkReq = decode(&body)?;
        if !req.ipv6_data.is_empty() {
            return Err(ApiError::BadRequest(
                "ferry networks are IPv4 only: leave out --ipv6".into(),
            ));
        }
        let [data] = req.ipv4_data.as_slice() else {
            return Err(ApiError::BadRequest(
                "a ferry network has exactly one IPv4 subnet".into(),
            ));
        };
        let gateway = match data.gateway.as_str() {
            "" => None,
            g => Some(address(g)?),
        };
        let internal = req
            .options
            .get(OPT_INTERNAL)
            .and_then(Value::as_bool)
            .unwrap_or(false);
        d.docker_create_network(&req.network_id, &data.pool, gateway, internal)
            .await?;
        Ok(json!({}))
    }
    .await;
    answer(result, "Err")
}

async fn delete_network(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let result = async {
        let req: NetworkReq = decode(&body)?;
        d.docker_delete_network(&req.network_id).await?;
        Ok(json!({}))
    }
    .await;
    answer(result, "Err")
}

async fn create_endpoint(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let result = async {
        let req: EndpointReq = decode(&body)?;
        let iface = req
            .interface
            .ok_or_else(|| ApiError::BadRequest("CreateEndpoint without an interface".into()))?;
        if !iface.address_ipv6.is_empty() {
            return Err(ApiError::BadRequest("ferry networks are IPv4 only".into()));
        }
        let ip = address(&iface.address)?;
        let given = (!iface.mac_address.is_empty()).then_some(iface.mac_address.as_str());
        let mac = d
            .docker_create_endpoint(&req.network_id, &req.endpoint_id, ip, given)
            .await?;
        // Docker takes a MAC from the driver only when it gave none.
        Ok(match given {
            None => json!({ "Interface": { "MacAddress": mac } }),
            Some(_) => json!({}),
        })
    }
    .await;
    answer(result, "Err")
}

async fn oper_info() -> Response {
    answer(Ok(json!({ "Value": {} })), "Err")
}

async fn delete_endpoint(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let result = async {
        let req: EndpointReq = decode(&body)?;
        d.docker_delete_endpoint(&req.network_id, &req.endpoint_id)
            .await?;
        Ok(json!({}))
    }
    .await;
    answer(result, "Err")
}

async fn join(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let result = async {
        let req: EndpointReq = decode(&body)?;
        let joined = d
            .docker_join(&req.network_id, &req.endpoint_id, &req.sandbox_key)
            .await?;
        // The gateway is on-link through a connected /32 route (the
        // endpoint's own address is a /32); the datapath answers its ARP.
        Ok(json!({
            "InterfaceName": { "SrcName": joined.src_name, "DstPrefix": "eth" },
            "Gateway": joined.gateway.to_string(),
            "StaticRoutes": [{ "Destination": format!("{}/32", joined.gateway), "RouteType": 1 }],
        }))
    }
    .await;
    answer(result, "Err")
}

async fn program(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let result = async {
        let req: EndpointReq = decode(&body)?;
        let specs = publish_specs(&req.options)?;
        d.docker_program(&req.network_id, &req.endpoint_id, &specs)
            .await?;
        Ok(json!({}))
    }
    .await;
    answer(result, "Err")
}

async fn revoke(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let result = async {
        let req: EndpointReq = decode(&body)?;
        d.docker_revoke(&req.network_id, &req.endpoint_id).await?;
        Ok(json!({}))
    }
    .await;
    answer(result, "Err")
}

async fn ipam_capabilities() -> Response {
    answer(
        Ok(json!({ "RequiresMACAddress": false, "RequiresRequestReplay": false })),
        "Error",
    )
}

async fn address_spaces() -> Response {
    answer(
        Ok(json!({
            "LocalDefaultAddressSpace": "ferry",
            "GlobalDefaultAddressSpace": "ferry-global",
        })),
        "Error",
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PoolReq {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    sub_pool: String,
    #[serde(default, rename = "V6")]
    v6: bool,
}

async fn request_pool(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let result = async {
        let req: PoolReq = decode(&body)?;
        if req.v6 {
            return Err(ApiError::BadRequest(
                "ferry networks are IPv4 only: leave out --ipv6".into(),
            ));
        }
        if !req.sub_pool.is_empty() {
            return Err(ApiError::BadRequest(
                "ferry does not support --ip-range: give --subnet alone".into(),
            ));
        }
        let subnet = d.docker_request_pool(&req.pool).await?;
        Ok(json!({ "PoolID": subnet.to_string(), "Pool": subnet.to_string(), "Data": {} }))
    }
    .await;
    answer(result, "Error")
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AddressReq {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
}

async fn request_address(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let result = async {
        let req: AddressReq = decode(&body)?;
        let gateway = req
            .options
            .as_ref()
            .and_then(|o| o.get("RequestAddressType"))
            .is_some_and(|t| t == GATEWAY_REQUEST);
        let requested = match req.address.as_str() {
            "" => None,
            a => Some(address(a)?),
        };
        let (ip, subnet) = d
            .docker_request_address(&req.pool_id, requested, gateway)
            .await?;
        // The gateway with its subnet's prefix (Docker shows it so); an
        // endpoint's address as a /32: every packet goes via the gateway.
        let prefix = if gateway { subnet.prefix_len() } else { 32 };
        Ok(json!({ "Address": format!("{ip}/{prefix}"), "Data": {} }))
    }
    .await;
    answer(result, "Error")
}

async fn release_address(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let result = async {
        let req: AddressReq = decode(&body)?;
        d.docker_release_address(&req.pool_id, address(&req.address)?)
            .await?;
        Ok(json!({}))
    }
    .await;
    answer(result, "Error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_port_map_becomes_publish_specs() {
        let options: BTreeMap<String, Value> = serde_json::from_value(json!({
            OPT_PORTMAP: [
                {"Proto":17,"IP":"","Port":90,"HostIP":"127.0.0.1","HostPort":9090,"HostPortEnd":9090},
                {"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},
                {"Proto":6,"IP":"","Port":81,"HostIP":"","HostPort":8100,"HostPortEnd":8105},
                {"Proto":6,"IP":"","Port":82,"HostIP":"","HostPort":0,"HostPortEnd":0},
            ]
        }))
        .expect("options");
        let specs = publish_specs(&options).expect("specs");
        assert_eq!(specs[0].host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(specs[0].proto, Proto::Udp);
        assert_eq!(specs[1].host_ports, HostPorts::Range(8080, 8080));
        assert_eq!(specs[2].host_ports, HostPorts::Range(8100, 8105));
        assert_eq!(specs[3].host_ports, HostPorts::Any);
        let sctp: BTreeMap<String, Value> =
            serde_json::from_value(json!({ OPT_PORTMAP: [{"Proto":132,"Port":5}] })).expect("o");
        assert!(publish_specs(&sctp).is_err());
        assert!(publish_specs(&BTreeMap::new()).expect("none").is_empty());
    }
}
