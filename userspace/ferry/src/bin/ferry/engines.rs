//! `ferry endpoint` and `ferry cni`: what ferry's datapath serves for other
//! engines (podman, containerd, Kubernetes through CNI; Docker through its
//! network plugin), and putting the CNI plugin where runtimes find it.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::Subcommand;
use ferry::client::Client;
use ferry_api::endpoint::{EndpointJson, PortMap};
use hyper::Method;

use crate::NO_BODY;

#[derive(Subcommand)]
pub enum EndpointAction {
    /// List the endpoints other engines made (CNI, Docker).
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CniAction {
    /// Install ferry-cni and a network configuration for it.
    Install {
        /// Where runtimes look for CNI plugins.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// Where runtimes look for network configurations.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The CNI network's name (what `podman run --network` takes).
        #[arg(long, default_value = "ferry")]
        name: String,
        /// The ferry network its containers join.
        #[arg(long, default_value = "bridge")]
        network: String,
    },
}

/// How `ferry port` and `ferry endpoint ls` show a published port.
fn port_line(p: &PortMap) -> String {
    let ip = p
        .host_ip
        .map_or_else(|| "0.0.0.0".to_owned(), |ip| ip.to_string());
    format!("{}/{} -> {ip}:{}", p.container_port, p.proto, p.host_port)
}

pub async fn endpoint(client: &Client, action: EndpointAction) -> anyhow::Result<()> {
    match action {
        EndpointAction::Ls { json } => {
            let list: Vec<EndpointJson> = client.call(Method::GET, "/endpoints", NO_BODY).await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            out!(
                "{:<14}{:<8}{:<20}{:<12}{:<16}{:<16}PORTS",
                "ENDPOINT ID",
                "ENGINE",
                "NAME",
                "NETWORK",
                "IP",
                "HOST VETH"
            );
            for e in &list {
                let ports: Vec<String> = e.ports.iter().map(port_line).collect();
                out!(
                    "{:<14}{:<8}{:<20}{:<12}{:<16}{:<16}{}",
                    &e.id[..12.min(e.id.len())],
                    e.kind,
                    e.name,
                    e.network,
                    e.ip,
                    e.host_ifname,
                    ports.join(", ")
                );
            }
            Ok(())
        }
    }
}

/// After `ferry ps`'s containers: the containers other engines run on
/// ferry's networks (their endpoints), if any, with their ports.
pub async fn others_in_ps(client: &Client) -> anyhow::Result<()> {
    let list: Vec<EndpointJson> = client.call(Method::GET, "/endpoints", NO_BODY).await?;
    if list.is_empty() {
        return Ok(());
    }
    out!();
    out!(
        "{:<14}{:<20}{:<10}{:<16}{:<16}PORTS",
        "ENDPOINT ID",
        "NAME",
        "ENGINE",
        "IP",
        "HOST VETH"
    );
    for e in &list {
        let ports: Vec<String> = e.ports.iter().map(port_line).collect();
        out!(
            "{:<14}{:<20}{:<10}{:<16}{:<16}{}",
            &e.id[..12.min(e.id.len())],
            e.name,
            e.kind,
            e.ip,
            e.host_ifname,
            ports.join(", ")
        );
    }
    Ok(())
}

/// `ferry port NAME` for an endpoint of another engine (Docker's own
/// `docker port` is empty for plugin networks); false if none is named so.
pub async fn endpoint_port(client: &Client, name: &str) -> anyhow::Result<bool> {
    let list: Vec<EndpointJson> = client.call(Method::GET, "/endpoints", NO_BODY).await?;
    let Some(e) = list
        .iter()
        .find(|e| e.name == name || e.id.starts_with(name))
    else {
        return Ok(false);
    };
    for p in &e.ports {
        out!("{}", port_line(p));
    }
    Ok(true)
}

pub fn cni(action: CniAction, socket: &Path) -> anyhow::Result<()> {
    match action {
        CniAction::Install {
            bin_dir,
            conf_dir,
            name,
            network,
        } => {
            let exe = std::env::current_exe().context("where is ferry?")?;
            let plugin = exe.with_file_name("ferry-cni");
            anyhow::ensure!(
                plugin.is_file(),
                "{} not found: ferry-cni is installed next to ferry",
                plugin.display()
            );
            anyhow::ensure!(
                !name.is_empty() && !name.contains(['/', ' ']),
                "invalid CNI network name {name:?}"
            );
            let target = bin_dir.join("ferry-cni");
            write_atomically(&target, &std::fs::read(&plugin)?, 0o755)?;
            let conf = serde_json::json!({
                "cniVersion": "1.0.0",
                "name": name,
                "plugins": [{
                    "type": "ferry-cni",
                    "network": network,
                    "socket": socket,
                    // podman hands `portMappings` only to a plugin that
                    // declares it, and drops it for --ip unless `ips` is
                    // declared too.
                    "capabilities": { "portMappings": true, "ips": true, "mac": true },
                }],
            });
            let conflist = conf_dir.join(format!("50-{name}.conflist"));
            let text = serde_json::to_string_pretty(&conf)? + "\n";
            write_atomically(&conflist, text.as_bytes(), 0o644)?;
            out!("installed {}", target.display());
            out!(
                "installed {} (CNI network {name} on ferry network {network})",
                conflist.display()
            );
            Ok(())
        }
    }
}

/// Writes `path` through a temporary file and a rename, so a runtime never
/// runs or reads a half-written file.
fn write_atomically(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("ferry-tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(data)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot install {}", path.display()))
}
