//! Docker's networks and endpoints on the agent: what the remote network
//! and IPAM driver calls (`crate::docker`) ask of ferryd.
//!
//! A Docker network is a ferry network whose ID is Docker's NetworkID and
//! whose name is `docker-<12 hex of it>`. Docker's IPAM pools are subnets
//! (the PoolID is the subnet), its addresses are held in ferry's IPAM from
//! RequestAddress to ReleaseAddress. A Docker endpoint is an endpoint of
//! kind `docker` and key `<NetworkID>/<EndpointID>`, made at CreateEndpoint
//! with its interface left on the host for Docker to move into the
//! container at Join, and its ports published at
//! ProgramExternalConnectivity.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ferry_net::{
    agent::{self, AttachSpec, Link, Placement},
    endpoint::EndpointRecord,
    link::{mac_to_string, parse_mac},
    network::{CreateSpec, parse_subnet},
    portmap::PublishSpec,
};
use ipnet::Ipv4Net;
use tracing::info;

use super::{Daemon, Inner, now, random_id};
use crate::api::ApiError;

/// What Docker gets back from a Join.
pub struct Joined {
    /// The interface Docker moves into the container (and renames).
    pub src_name: String,
    /// The container's next hop: the network's gateway address.
    pub gateway: Ipv4Addr,
}

/// The network's gateway: its first host address, never given to an
/// endpoint by ferry's IPAM.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

fn key(network_id: &str, endpoint_id: &str) -> String {
    format!("{network_id}/{endpoint_id}")
}

fn network_name(network_id: &str) -> String {
    format!("docker-{}", &network_id[..12.min(network_id.len())])
}

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

impl Inner {
    fn docker_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<&EndpointRecord, ApiError> {
        let key = key(network_id, endpoint_id);
        self.endpoints
            .values()
            .find(|e| e.kind == "docker" && e.key == key)
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no ferry endpoint for Docker endpoint {endpoint_id}"
                ))
            })
    }

    fn save_endpoint(&mut self, record: EndpointRecord) -> Result<(), ApiError> {
        self.endpoint_store
            .save(&record)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        self.endpoints.insert(record.id.clone(), record);
        Ok(())
    }
}

impl Daemon {
    /// RequestPool: the subnet Docker asked for (`--subnet`), else a free
    /// /24 of ferry's pool. The PoolID is the subnet.
    pub async fn docker_request_pool(&self, pool: &str) -> Result<Ipv4Net, ApiError> {
        let inner = self.inner.lock().await;
        match pool {
            "" => Ok(inner.agent.networks.free_subnet()?),
            s => Ok(parse_subnet(s).map_err(|e| bad(e.to_string()))?),
        }
    }

    /// RequestAddress: the gateway (no endpoint ever gets it), or an
    /// address for an endpoint, held until ReleaseAddress: the one asked
    /// for (`--ip`), else the network's next free one.
    pub async fn docker_request_address(
        &self,
        pool: &str,
        requested: Option<Ipv4Addr>,
        gateway: bool,
    ) -> Result<(Ipv4Addr, Ipv4Net), ApiError> {
        let subnet = parse_subnet(pool).map_err(|e| bad(format!("unknown pool: {e}")))?;
        if gateway {
            return Ok((requested.unwrap_or_else(|| gateway_of(subnet)), subnet));
        }
        let mut inner = self.inner.lock().await;
        let name = inner
            .agent
            .networks
            .by_subnet(subnet)
            .map(|d| d.name.clone())
            .ok_or_else(|| ApiError::NotFound(format!("no ferry network on {subnet}")))?;
        let ip = inner.agent.networks.allocate(&name, requested)?;
        Ok((ip, subnet))
    }

    /// ReleaseAddress: an endpoint's address goes back to the pool.
    pub async fn docker_release_address(&self, pool: &str, ip: Ipv4Addr) -> Result<(), ApiError> {
        let subnet = parse_subnet(pool).map_err(|e| bad(format!("unknown pool: {e}")))?;
        if ip == gateway_of(subnet) {
            return Ok(());
        }
        self.inner.lock().await.agent.networks.release(ip);
        Ok(())
    }

    /// CreateNetwork: a ferry network with Docker's ID on the pool's
    /// subnet, internal if Docker says so.
    pub async fn docker_create_network(
        &self,
        network_id: &str,
        subnet: &str,
        gateway: Option<Ipv4Addr>,
        internal: bool,
    ) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let name = network_name(network_id);
        let spec = CreateSpec {
            name: &name,
            subnet,
            internal,
            driver: "",
            options: &BTreeMap::new(),
        };
        let def = inner
            .agent
            .create_network(&spec, network_id.to_owned(), now())
            .await?;
        // A gateway Docker was given (`--gateway`) is held, so no endpoint
        // gets it; the first host address never is handed out anyway.
        if let Some(gw) = gateway.filter(|gw| *gw != gateway_of(def.subnet))
            && let Err(e) = inner.agent.networks.reserve(&def.name, gw)
        {
            let _ = inner.agent.remove_network(&def.name).await;
            return Err(e.into());
        }
        info!(network = %def.name, subnet = %def.subnet, internal, "Docker network created");
        Ok(())
    }

    /// DeleteNetwork: Docker removed every endpoint first.
    pub async fn docker_delete_network(&self, network_id: &str) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let Ok(def) = inner.agent.networks.find(network_id).cloned() else {
            // Gone already (a retried delete).
            return Ok(());
        };
        let stale: Vec<String> = inner
            .endpoints
            .values()
            .filter(|e| e.kind == "docker" && e.network.network == def.name)
            .map(|e| e.id.clone())
            .collect();
        for id in stale {
            inner.remove_endpoint(&id).await;
        }
        inner.agent.remove_network(&def.name).await?;
        info!(network = %def.name, "Docker network removed");
        Ok(())
    }

    /// CreateEndpoint: the veth, its host side on the datapath, its peer
    /// left on the host for Join. Returns the endpoint's MAC.
    pub async fn docker_create_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
        address: Ipv4Addr,
        mac: Option<&str>,
    ) -> Result<String, ApiError> {
        let mut inner = self.inner.lock().await;
        let def = inner.agent.networks.find(network_id)?.clone();
        if inner.docker_endpoint(network_id, endpoint_id).is_ok() {
            return Err(ApiError::Conflict(format!(
                "Docker endpoint {endpoint_id} exists already"
            )));
        }
        let mac = match mac {
            None | Some("") => None,
            Some(text) => {
                Some(parse_mac(text).ok_or_else(|| bad(format!("invalid MAC address {text:?}")))?)
            }
        };
        let id = random_id()?;
        // The peer's name on the host until Docker moves it: "fx" is never
        // the shape of a host-side veth (`fy`), so no clean-up mistakes it.
        let link = Link::first(&id, &format!("fx{}", &id[..12]));
        let spec = AttachSpec {
            owner: &id,
            placement: Placement::Host,
            network: &def,
            ip: Some(address),
            ip_held: true,
            mac,
            link: &link,
        };
        let mut partial = agent::Partial::default();
        let net = match inner.agent.attach(&spec, &mut partial).await {
            Ok(net) => net,
            Err(e) => {
                inner.agent.rollback(&id, partial).await;
                return Err(e.into());
            }
        };
        let record = EndpointRecord {
            id: id.clone(),
            kind: "docker".into(),
            key: key(network_id, endpoint_id),
            name: endpoint_id[..12.min(endpoint_id.len())].to_owned(),
            netns: String::new(),
            network: net,
            ports: Vec::new(),
            created: now(),
        };
        let mac = mac_to_string(&record.network.mac);
        if let Err(e) = inner.save_endpoint(record) {
            inner.agent.rollback(&id, partial).await;
            return Err(e);
        }
        info!(id = &id[..12], endpoint = endpoint_id, network = %def.name, ip = %address, "Docker endpoint created");
        Ok(mac)
    }

    /// Join: the interface Docker moves into `sandbox`, and the gateway.
    pub async fn docker_join(
        &self,
        network_id: &str,
        endpoint_id: &str,
        sandbox: &str,
    ) -> Result<Joined, ApiError> {
        let mut inner = self.inner.lock().await;
        let mut record = inner.docker_endpoint(network_id, endpoint_id)?.clone();
        let subnet = inner.agent.networks.find(network_id)?.subnet;
        record.netns = sandbox.to_owned();
        let joined = Joined {
            src_name: record.network.ifname.clone(),
            gateway: gateway_of(subnet),
        };
        inner.save_endpoint(record)?;
        Ok(joined)
    }

    /// ProgramExternalConnectivity: publishes the endpoint's ports (again:
    /// Docker repeats it when the gateway endpoint moves).
    pub async fn docker_program(
        &self,
        network_id: &str,
        endpoint_id: &str,
        specs: &[PublishSpec],
    ) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let mut record = inner.docker_endpoint(network_id, endpoint_id)?.clone();
        inner.agent.unpublish(&record.id, &record.ports);
        let owner = record.owner_name();
        let mut partial = agent::Partial::default();
        let published = inner
            .agent
            .publish(
                &record.id,
                &owner,
                record.network.ip,
                specs,
                ferry_net::portmap::Hold::Socket,
                &mut partial,
            )
            .await;
        match published {
            Ok(ports) => {
                record.ports = ports;
                inner.save_endpoint(record)
            }
            Err(e) => {
                inner.agent.rollback(&record.id, partial).await;
                record.ports.clear();
                inner.save_endpoint(record)?;
                Err(e.into())
            }
        }
    }

    /// RevokeExternalConnectivity: unpublishes the endpoint's ports.
    pub async fn docker_revoke(&self, network_id: &str, endpoint_id: &str) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let Ok(record) = inner.docker_endpoint(network_id, endpoint_id).cloned() else {
            return Ok(());
        };
        inner.agent.unpublish(&record.id, &record.ports);
        let mut record = record;
        record.ports.clear();
        inner.save_endpoint(record)
    }

    /// DeleteEndpoint: the veth (Docker moved it back to the host) and
    /// everything else the endpoint held but its address.
    pub async fn docker_delete_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let Ok(id) = inner
            .docker_endpoint(network_id, endpoint_id)
            .map(|e| e.id.clone())
        else {
            return Ok(());
        };
        inner.remove_endpoint(&id).await;
        // Docker leaves its end down on the host under its own name; the
        // pair goes with the host side, deleted above.
        Ok(())
    }
}
