//! `ferryd reset`: everything ferryd made, taken apart while it is stopped.

use std::io;

use nix::{
    sys::{
        signal::{Signal, kill},
        wait::waitpid,
    },
    unistd::Pid,
};
use tracing::info;

use ferry_net::endpoint::EndpointStore;

use super::{lock, uplinks};
use crate::{
    cgroup::Cgroups, config::Config, datapath, link::Netlink, netns, portmap, preflight,
    state::Store,
};

/// `ferryd reset`: removes every container, attachment, pin and state file
/// that ferryd with this configuration owns. Refuses while ferryd runs.
pub async fn reset(config: &Config) -> anyhow::Result<()> {
    preflight::require_root()?;
    std::fs::create_dir_all(&config.run_dir)?;
    let _lock = lock(&config.run_dir)?;
    let mut failures = Vec::new();
    let netlink = Netlink::current()?;
    let store = Store::new(&config.state_dir)?;
    let cgroups = Cgroups::detect(&config.cgroup_parent, &config.cgroup)?;
    let (records, orphans) = store.load_all()?;
    for id in &orphans {
        if let Err(e) = cgroups.remove(id) {
            failures.push(e.to_string());
        }
        if let Err(e) = store.remove(id) {
            failures.push(e.to_string());
        }
    }
    for record in &records {
        if let Some(monitor) = record.monitor_alive() {
            // The workload dies with its monitor (PDEATHSIG).
            let _ = kill(Pid::from_raw(monitor as i32), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(monitor as i32), None);
        }
        if let Err(e) = cgroups.remove(&record.id) {
            failures.push(e.to_string());
        }
        for net in record.attachments() {
            delete_link(&netlink, &net.host_ifname, &mut failures).await;
        }
        if let Err(e) = store.remove(&record.id) {
            failures.push(e.to_string());
        }
        info!(id = %record.short_id(), "removed");
    }
    // Endpoints of other engines: their namespaces stay the engines', the
    // interfaces ferry put in them go.
    let endpoints = EndpointStore::new(&config.state_dir)?;
    for endpoint in endpoints.load_all()? {
        delete_link(&netlink, &endpoint.network.host_ifname, &mut failures).await;
        if let Err(e) = endpoints.remove(&endpoint.id) {
            failures.push(e.to_string());
        }
        info!(id = %endpoint.short_id(), kind = %endpoint.kind, key = %endpoint.key, "endpoint removed");
    }
    use aya::programs::TcAttachType::{Egress, Ingress};
    let uplinks = uplinks(config, &netlink).await?;
    let filters = uplinks
        .iter()
        .flat_map(|uplink| {
            [
                (uplink.clone(), Ingress, datapath::PROG_UPLINK_INGRESS),
                (uplink.clone(), Egress, datapath::PROG_UPLINK_EGRESS),
            ]
        })
        .chain([(
            datapath::LOOPBACK.to_owned(),
            Ingress,
            datapath::PROG_LOCAL_INGRESS,
        )]);
    for (ifname, hook, program) in filters {
        match aya::programs::tc::qdisc_detach_program(&ifname, hook, program) {
            Ok(()) => info!(%ifname, program, "detached"),
            Err(aya::programs::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => failures.push(format!("detach {program} from {ifname}: {e}")),
        }
    }
    if let Err(e) = cgroups.remove_parents() {
        failures.push(e.to_string());
    }
    if let Err(e) = netns::loopback_hairpin(false) {
        failures.push(format!("restore lo's settings: {e}"));
    }
    if let Err(e) = portmap::reserve_snat_ports(false) {
        failures.push(format!("release the masquerade ports: {e}"));
    }
    // The VXLAN device of a cluster member (its encap routes go with it).
    delete_link(&netlink, datapath::VXLAN_DEVICE, &mut failures).await;
    // Routes to other members' blocks, as the pinned map lists them.
    match datapath::pinned_remote_blocks(&config.pin_dir) {
        Ok(blocks) => {
            for block in blocks {
                if let Err(e) = netlink.delete_route(block).await {
                    failures.push(format!("delete the route to {block}: {e}"));
                }
            }
        }
        Err(e) => failures.push(format!("read the remote blocks: {e}")),
    }
    let plugin = config.docker_plugin.iter().map(|p| (p, false));
    for (path, is_dir) in [(&config.pin_dir, true), (&config.socket, false)]
        .into_iter()
        .chain(plugin)
    {
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

/// Deletes an interface by name (a veth's peer goes with it); a missing
/// one is fine.
async fn delete_link(netlink: &Netlink, name: &str, failures: &mut Vec<String>) {
    match netlink.index_of(name).await {
        Ok(Some(index)) => {
            if let Err(e) = netlink.delete(index).await {
                failures.push(format!("delete {name}: {e}"));
            }
        }
        Ok(None) => {}
        Err(e) => failures.push(format!("look up {name}: {e}")),
    }
}
