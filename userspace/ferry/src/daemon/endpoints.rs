//! Endpoints of other engines: a network namespace made by a CNI runtime or
//! Docker, attached to a ferry network through the same agent calls as
//! ferry's own containers, persisted so that a restarted ferryd adopts and
//! can still remove it.

use std::{os::fd::AsFd as _, path::Path, sync::Arc};

use ferry_api::endpoint::{EndpointCreate, EndpointGc, EndpointJson, GATEWAY, PortMap, Removed};
use ferry_net::{
    agent::{self, AttachSpec, Link, Placement},
    endpoint::EndpointRecord,
    link::{mac_to_string, parse_mac},
    portmap::{HostPorts, PortMapping, Proto, PublishSpec},
};
use tracing::{info, warn};

use super::{Daemon, Inner, now, random_id};
use crate::{api::ApiError, netns, network::NetworkDef};

/// The engines that may own endpoints.
const KINDS: [&str; 2] = ["cni", "docker"];

/// Who holds an endpoint's host ports against host processes: a CNI
/// runtime does it itself (rootful podman listens on them after ADD, as
/// with the portmap plugin); dockerd leaves a remote driver's to it.
fn hold_of(kind: &str) -> ferry_net::portmap::Hold {
    if kind == "cni" {
        ferry_net::portmap::Hold::Runtime
    } else {
        ferry_net::portmap::Hold::Socket
    }
}

/// Linux's limit on an interface name, without the NUL.
const IFNAME_MAX: usize = 15;

/// A create request, checked before anything is made.
struct Plan {
    network: NetworkDef,
    netns: std::fs::File,
    mac: Option<[u8; 6]>,
    specs: Vec<PublishSpec>,
}

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

impl Plan {
    pub(super) fn of(req: &EndpointCreate, inner: &Inner) -> Result<Self, ApiError> {
        check_kind(&req.kind)?;
        if req.key.is_empty() {
            return Err(bad("an endpoint needs its engine's key".into()));
        }
        if req.ifname.is_empty()
            || req.ifname.len() > IFNAME_MAX
            || req.ifname.contains(['/', ' ', ':'])
            || req.ifname == "lo"
        {
            return Err(bad(format!("invalid interface name {:?}", req.ifname)));
        }
        // A network the configuration names wrongly is the configuration's
        // fault, not a missing object the caller could create.
        let network = inner
            .agent
            .networks
            .find(&req.network)
            .map_err(|e| bad(format!("{e} (create it with `ferry network create`)")))?
            .clone();
        if network.internal && !req.ports.is_empty() {
            return Err(bad(format!(
                "conflicting options: port publishing and the internal network {}",
                network.name
            )));
        }
        let path = Path::new(&req.netns);
        if !path.is_absolute() {
            return Err(bad(format!(
                "the network namespace {:?} must be an absolute path",
                req.netns
            )));
        }
        let netns = netns::open_net(path).map_err(|e| match e {
            netns::NetnsError::Open { ref source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                ApiError::NotFound(e.to_string())
            }
            e => bad(e.to_string()),
        })?;
        let mac = match &req.mac {
            None => None,
            Some(text) => {
                Some(parse_mac(text).ok_or_else(|| bad(format!("invalid MAC address {text:?}")))?)
            }
        };
        let specs = req
            .ports
            .iter()
            .map(publish_spec)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            network,
            netns,
            mac,
            specs,
        })
    }
}

fn check_kind(kind: &str) -> Result<(), ApiError> {
    if KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(bad(format!(
            "unknown endpoint kind {kind:?}: {}",
            KINDS.join(" or ")
        )))
    }
}

/// One port as the datapath publishes it.
fn publish_spec(port: &PortMap) -> Result<PublishSpec, ApiError> {
    let proto = match port.proto.to_ascii_lowercase().as_str() {
        "tcp" | "" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => {
            return Err(bad(format!(
                "cannot publish {other} port {}: ferry publishes tcp and udp",
                port.container_port
            )));
        }
    };
    if port.container_port == 0 {
        return Err(bad("a published port needs a container port".into()));
    }
    Ok(PublishSpec {
        host_ip: port.host_ip.filter(|ip| !ip.is_unspecified()),
        host_ports: match port.host_port {
            0 => HostPorts::Any,
            p => HostPorts::Range(p, p),
        },
        container_ports: (port.container_port, port.container_port),
        proto,
    })
}

fn port_map(m: &PortMapping) -> PortMap {
    PortMap {
        host_ip: m.host_ip,
        host_port: m.host_port,
        container_port: m.container_port,
        proto: m.proto.to_string(),
    }
}

impl Inner {
    pub(super) fn endpoint_json(&self, r: &EndpointRecord) -> EndpointJson {
        let subnet = self
            .agent
            .networks
            .find(&r.network.network)
            .map(|d| d.subnet.to_string())
            .unwrap_or_default();
        EndpointJson {
            id: r.id.clone(),
            kind: r.kind.clone(),
            key: r.key.clone(),
            name: r.name.clone(),
            netns: r.netns.clone(),
            ifname: r.network.ifname.clone(),
            network: r.network.network.clone(),
            ip: r.network.ip,
            mac: mac_to_string(&r.network.mac),
            gateway: GATEWAY,
            subnet,
            host_ifname: r.network.host_ifname.clone(),
            host_mac: mac_to_string(&r.network.host_mac),
            ports: r.ports.iter().map(port_map).collect(),
            created: r.created,
        }
    }

    pub(super) fn endpoint_by_key(&self, kind: &str, key: &str) -> Option<&EndpointRecord> {
        self.endpoints
            .values()
            .find(|e| e.kind == kind && e.key == key)
    }

    /// Takes an endpoint apart and forgets it. Idempotent.
    pub(super) async fn remove_endpoint(&mut self, id: &str) {
        let Some(record) = self.endpoints.remove(id) else {
            return;
        };
        self.agent.unpublish(id, &record.ports);
        self.agent.detach(id, &record.network, true).await;
        if let Err(e) = self.endpoint_store.remove(id) {
            warn!(%id, %e, "cannot forget the endpoint");
        }
        info!(id = %record.short_id(), kind = %record.kind, key = %record.key, "endpoint removed");
    }
}

impl Daemon {
    /// `POST /endpoints`: the namespace gets an interface on the network
    /// and its ports published; any failure leaves nothing behind.
    pub async fn endpoint_create(&self, req: EndpointCreate) -> Result<EndpointJson, ApiError> {
        let mut inner = self.inner.lock().await;
        let plan = Plan::of(&req, &inner)?;
        if let Some(old) = inner.endpoint_by_key(&req.kind, &req.key) {
            return Err(ApiError::Conflict(format!(
                "{} endpoint {} already exists (ferry endpoint {})",
                req.kind,
                req.key,
                old.short_id()
            )));
        }
        let id = random_id()?;
        let name = match req.name.as_str() {
            "" => id[..12].to_owned(),
            n => n.to_owned(),
        };
        let link = Link::first(&id, &req.ifname);
        let spec = AttachSpec {
            owner: &id,
            placement: Placement::Netns(plan.netns.as_fd()),
            ip_held: false,
            network: &plan.network,
            ip: req.ip,
            mac: plan.mac,
            link: &link,
        };
        let mut partial = agent::Partial::default();
        let made = async {
            let net = inner.agent.attach(&spec, &mut partial).await?;
            if ferry_net::network::valid_name(&name) {
                inner
                    .agent
                    .join_dns(&id, std::slice::from_ref(&name), &net, Some(&mut partial));
            }
            let owner = format!("{} endpoint {name}", req.kind);
            let ports = inner
                .agent
                .publish(
                    &id,
                    &owner,
                    net.ip,
                    &plan.specs,
                    hold_of(&req.kind),
                    &mut partial,
                )
                .await?;
            let record = EndpointRecord {
                id: id.clone(),
                kind: req.kind.clone(),
                key: req.key.clone(),
                name: name.clone(),
                netns: req.netns.clone(),
                network: net,
                ports,
                created: now(),
            };
            inner
                .endpoint_store
                .save(&record)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok::<_, ApiError>(record)
        }
        .await;
        match made {
            Ok(record) => {
                info!(id = %record.short_id(), kind = %record.kind, key = %record.key, network = %record.network.network, ip = %record.network.ip, "endpoint created");
                let json = inner.endpoint_json(&record);
                inner.endpoints.insert(id, record);
                Ok(json)
            }
            Err(e) => {
                warn!(%id, kind = %req.kind, key = %req.key, %e, "endpoint creation failed; rolling back");
                inner.agent.rollback(&id, partial).await;
                Err(e)
            }
        }
    }

    /// `GET /endpoints`: all, or those of one kind, or one by its key.
    pub async fn endpoint_list(
        &self,
        kind: Option<&str>,
        key: Option<&str>,
    ) -> Result<Vec<EndpointJson>, ApiError> {
        if let Some(kind) = kind {
            check_kind(kind)?;
        }
        let inner = self.inner.lock().await;
        Ok(inner
            .endpoints
            .values()
            .filter(|e| kind.is_none_or(|k| e.kind == k) && key.is_none_or(|k| e.key == k))
            .map(|e| inner.endpoint_json(e))
            .collect())
    }

    /// `DELETE /endpoints`: removes the endpoint named by its engine. One
    /// that does not exist (never made, or removed already) is no error:
    /// engines repeat deletes (CNI DEL must be idempotent).
    pub async fn endpoint_delete(&self, kind: &str, key: &str) -> Result<Removed, ApiError> {
        check_kind(kind)?;
        let mut inner = self.inner.lock().await;
        let Some(id) = inner.endpoint_by_key(kind, key).map(|e| e.id.clone()) else {
            return Ok(Removed { removed: 0 });
        };
        inner.remove_endpoint(&id).await;
        Ok(Removed { removed: 1 })
    }

    /// `POST /endpoints/check`: the endpoint is still as ferryd made it:
    /// its namespace exists and holds the interface, the host side is up
    /// with the datapath's programs, its address is the datapath's.
    pub async fn endpoint_check(&self, kind: &str, key: &str) -> Result<EndpointJson, ApiError> {
        check_kind(kind)?;
        let inner = self.inner.lock().await;
        let record = inner.endpoint_by_key(kind, key).ok_or_else(|| {
            ApiError::NotFound(format!(
                "no {kind} endpoint {key} (ferryd never made it, or it was removed)"
            ))
        })?;
        let broken =
            |what: String| ApiError::Conflict(format!("{kind} endpoint {key} is broken: {what}"));
        let net = &record.network;
        match inner.agent.netlink.index_of(&net.host_ifname).await {
            Ok(Some(index)) if index == net.host_ifindex => {}
            Ok(_) => {
                return Err(broken(format!(
                    "its host interface {} is gone",
                    net.host_ifname
                )));
            }
            Err(e) => return Err(ApiError::Internal(e.to_string())),
        }
        let attached = inner
            .agent
            .datapath
            .attachments()
            .into_iter()
            .any(|a| a.target == net.host_ifname);
        if !attached {
            return Err(broken(format!(
                "the datapath is not attached to {}",
                net.host_ifname
            )));
        }
        let ns = netns::open_net(Path::new(&record.netns))
            .map_err(|e| broken(format!("its namespace: {e}")))?;
        let (inside, _) = agent::netlink_in(ns.as_fd())?;
        let present = inside
            .index_of(&net.ifname)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if present.is_none() {
            return Err(broken(format!(
                "{} is missing from its namespace",
                net.ifname
            )));
        }
        Ok(inner.endpoint_json(record))
    }

    /// `POST /endpoints/gc`: removes every endpoint of `kind` in `scope`
    /// that the engine no longer knows (CNI GC's valid attachments).
    pub async fn endpoint_gc(&self, req: EndpointGc) -> Result<Removed, ApiError> {
        check_kind(&req.kind)?;
        if req.scope.is_empty() {
            return Err(bad(
                "a GC needs a scope (a CNI network's name, a Docker network's ID)".into(),
            ));
        }
        let mut inner = self.inner.lock().await;
        let stale: Vec<String> = inner
            .endpoints
            .values()
            .filter(|e| {
                e.kind == req.kind && e.key.starts_with(&req.scope) && !req.keep.contains(&e.key)
            })
            .map(|e| e.id.clone())
            .collect();
        for id in &stale {
            inner.remove_endpoint(id).await;
        }
        Ok(Removed {
            removed: stale.len(),
        })
    }

    /// Takes over the endpoints an earlier ferryd made: those whose host
    /// veth still exists are re-attached to this ferryd's programs; the
    /// others (their namespace went while no ferryd watched) are
    /// forgotten, and `reconcile` removes what is left of them.
    pub(super) async fn adopt_endpoints(self: &Arc<Self>) {
        let mut inner = self.inner.lock().await;
        let records = match inner.endpoint_store.load_all() {
            Ok(r) => r,
            Err(e) => {
                warn!(%e, "cannot read the stored endpoints");
                return;
            }
        };
        for record in records {
            let net = &record.network;
            let alive = matches!(
                inner.agent.netlink.index_of(&net.host_ifname).await,
                Ok(Some(index)) if index == net.host_ifindex
            );
            if !alive {
                warn!(id = %record.short_id(), kind = %record.kind, key = %record.key, "endpoint's interface is gone; forgetting it");
                if let Err(e) = inner.endpoint_store.remove(&record.id) {
                    warn!(id = %record.id, %e, "cannot forget the endpoint");
                }
                continue;
            }
            inner.agent.adopt(&record.id, net);
            if ferry_net::network::valid_name(&record.name) {
                inner
                    .agent
                    .join_dns(&record.id, std::slice::from_ref(&record.name), net, None);
            }
            inner.agent.adopt_ports(
                &record.id,
                &record.owner_name(),
                &record.ports,
                hold_of(&record.kind),
            );
            info!(id = %record.short_id(), kind = %record.kind, key = %record.key, "adopted endpoint");
            inner.endpoints.insert(record.id.clone(), record);
        }
    }
}
