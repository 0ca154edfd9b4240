//! `ferry network`: create, list, inspect and remove networks, and connect
//! or disconnect a running container.

use std::{net::Ipv4Addr, os::fd::AsFd as _};

use ferry_net::agent::{self, AttachSpec, Link, Placement};
use tracing::{info, warn};

use super::{Daemon, now, random_id};
use crate::{
    api::{
        ApiError, EndpointConfig, NetworkConnect, NetworkCreate, NetworkDisconnect, NetworkJson,
    },
    netns,
    network::{NetworkDef, NetworkError},
    state::{NetworkRecord, Status},
};

/// The static address an endpoint asks for on `network` (`--ip`), checked
/// with its aliases: both are for user-defined networks only, as in Docker.
pub(super) fn endpoint_address(
    network: &NetworkDef,
    ep: &EndpointConfig,
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

impl Daemon {
    /// `ferry network create`: the network, its policy in the datapath.
    pub async fn network_create(&self, req: NetworkCreate) -> Result<NetworkJson, ApiError> {
        let mut inner = self.inner.lock().await;
        let spec = crate::network::CreateSpec {
            name: &req.name,
            subnet: &req.subnet,
            internal: req.internal,
            driver: &req.driver,
            options: &req.options,
        };
        let def = inner
            .agent
            .create_network(&spec, random_id()?, now())
            .await?;
        info!(network = %def.name, subnet = %def.subnet, net_id = def.net_id, internal = def.internal, icc = def.icc, "network created");
        Ok(NetworkJson::of(&def, &[]))
    }

    pub async fn network_list(&self) -> Vec<NetworkJson> {
        let inner = self.inner.lock().await;
        inner
            .agent
            .networks
            .list()
            .map(|def| NetworkJson::of(def, &inner.members(&def.name)))
            .collect()
    }

    pub async fn network_inspect(&self, reference: &str) -> Result<NetworkJson, ApiError> {
        let inner = self.inner.lock().await;
        let def = inner.agent.networks.find(reference)?;
        Ok(NetworkJson::of(def, &inner.members(&def.name)))
    }

    /// `ferry network rm`: refused while a running container is on it.
    pub async fn network_remove(&self, reference: &str) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let def = inner.agent.networks.find(reference)?.clone();
        let members: Vec<String> = inner
            .members(&def.name)
            .iter()
            .map(|m| m.name.to_owned())
            .collect();
        if !members.is_empty() {
            return Err(ApiError::Conflict(format!(
                "network {} is in use by container(s) {}",
                def.name,
                members.join(", ")
            )));
        }
        inner.agent.remove_network(&def.name).await?;
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
        let def = inner.agent.networks.find(reference)?.clone();
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
        let ns = netns::of_pid(pid).map_err(|e| ApiError::Internal(e.to_string()))?;
        let spec = AttachSpec {
            owner: &record.id,
            placement: Placement::Netns(ns.as_fd()),
            ip_held: false,
            network: &def,
            ip,
            mac: None,
            link: &link,
        };
        let mut partial = agent::Partial::default();
        let wired = inner.agent.attach(&spec, &mut partial).await;
        let mut net = match wired {
            Ok(net) => net,
            Err(e) => {
                warn!(id = %record.id, network = %def.name, %e, "connect failed; rolling back");
                inner.agent.rollback(&record.id, partial).await;
                return Err(e.into());
            }
        };
        net.aliases.clone_from(&ep.aliases);
        inner
            .agent
            .join_dns(&record.id, &record.dns_names(), &net, None);
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
        let def = inner.agent.networks.find(reference)?.clone();
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
        inner.agent.detach(&record.id, &net, false).await;
        info!(id = %record.short_id(), network = %def.name, "disconnected");
        inner.save(record)
    }
}
