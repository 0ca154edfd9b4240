//! `ferry network`: create, ls, inspect, rm, connect, disconnect.

use std::process::ExitCode;

use clap::Subcommand;
use ferry::{
    api::{EndpointConfig, NetworkConnect, NetworkCreate, NetworkDisconnect, NetworkJson},
    client::Client,
};
use hyper::Method;

use crate::NO_BODY;

#[derive(Subcommand)]
pub enum NetworkAction {
    /// Create a network.
    Create {
        /// IPv4 CIDR (default: a free /24 from 10.90.0.0/15).
        #[arg(long)]
        subnet: Option<String>,
        /// No masquerade, no published ports: its containers reach only
        /// each other.
        #[arg(long)]
        internal: bool,
        /// Driver option KEY=VALUE: com.docker.network.bridge.enable_icc=false
        /// blocks traffic between the network's containers; macvlan needs
        /// parent=IFACE.
        #[arg(short = 'o', long = "opt")]
        opts: Vec<String>,
        /// bridge (the default: a veth per container) or macvlan (a macvlan
        /// slave of `-o parent=IFACE` per container: no veth crossing, same
        /// NAT and published ports; see `ferry network create --help`).
        #[arg(short = 'd', long, default_value = "bridge", long_help = DRIVER_HELP)]
        driver: String,
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print networks' details as JSON.
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks (refused while a running container is on one).
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Give a running container an interface (eth1, ...) on a network.
    Connect {
        /// The container's IPv4 address on it.
        #[arg(long)]
        ip: Option<String>,
        /// Another name of the container on it (repeatable).
        #[arg(long = "alias")]
        aliases: Vec<String>,
        network: String,
        container: String,
    },
    /// Remove the interface a container got with connect.
    Disconnect { network: String, container: String },
}

const DRIVER_HELP: &str = "bridge (the default) gives each container a veth pair. \
macvlan gives each container a macvlan slave of the uplink named by -o parent=IFACE: \
packets to and from it skip the veth crossing (one queue less each way), and ferry \
translates them on that uplink (published ports, masquerade, isolation, the host and \
other containers of the network reach it as on a bridge network). Trade-offs: one \
uplink per network, which must be one of ferryd's --uplink; only the host's MAC is \
ever seen on the wire (fine where a switch or cloud allows one MAC per port).";

const MACVLAN_NOTE: &str = "macvlan network: containers get a slave of its parent uplink; \
published ports, masquerade and isolation work as on a bridge network, and the wire \
sees only the host's MAC.";

/// `ferry network ...`.
pub async fn network(client: &Client, action: NetworkAction) -> anyhow::Result<ExitCode> {
    match action {
        NetworkAction::Create {
            subnet,
            internal,
            opts,
            driver,
            name,
        } => {
            let options = opts
                .iter()
                .map(|o| {
                    o.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .ok_or_else(|| anyhow::anyhow!("invalid option {o:?}: expected KEY=VALUE"))
                })
                .collect::<anyhow::Result<_>>()?;
            let req = NetworkCreate {
                name,
                subnet: subnet.unwrap_or_default(),
                internal,
                driver,
                options,
            };
            let net: NetworkJson = client
                .call(Method::POST, "/networks/create", Some(&req))
                .await?;
            if net.driver == "macvlan" {
                eprintln!("{MACVLAN_NOTE}");
            }
            out!("{}", net.id);
        }
        NetworkAction::Ls { quiet } => {
            let list: Vec<NetworkJson> = client.call(Method::GET, "/networks", NO_BODY).await?;
            if quiet {
                for n in &list {
                    out!("{}", n.name);
                }
            } else {
                out!(
                    "{:<14}{:<20}{:<8}{:<20}{:<10}{:<6}CONTAINERS",
                    "NETWORK ID",
                    "NAME",
                    "DRIVER",
                    "SUBNET",
                    "INTERNAL",
                    "ICC"
                );
                for n in &list {
                    let subnet = n.ipam.config.first().map_or("", |c| c.subnet.as_str());
                    let icc = n
                        .options
                        .get(ferry::network::OPT_ICC)
                        .map_or("true", String::as_str);
                    out!(
                        "{:<14}{:<20}{:<8}{:<20}{:<10}{:<6}{}",
                        &n.id[..12],
                        n.name,
                        n.driver,
                        subnet,
                        n.internal,
                        icc,
                        n.containers.len()
                    );
                }
            }
        }
        NetworkAction::Inspect { networks } => {
            let mut out = Vec::new();
            let mut missing = false;
            for n in networks {
                match client
                    .call::<NetworkJson>(Method::GET, &format!("/networks/{n}"), NO_BODY)
                    .await
                {
                    Ok(net) => out.push(net),
                    Err(e) => {
                        eprintln!("ferry: {e}");
                        missing = true;
                    }
                }
            }
            out!("{}", serde_json::to_string_pretty(&out)?);
            if missing {
                return Ok(ExitCode::FAILURE);
            }
        }
        NetworkAction::Connect {
            ip,
            aliases,
            network,
            container,
        } => {
            let req = NetworkConnect {
                container,
                endpoint_config: EndpointConfig {
                    ipv4_address: ip.unwrap_or_default(),
                    aliases,
                },
            };
            client
                .call::<()>(
                    Method::POST,
                    &format!("/networks/{network}/connect"),
                    Some(&req),
                )
                .await?;
        }
        NetworkAction::Disconnect { network, container } => {
            let req = NetworkDisconnect { container };
            client
                .call::<()>(
                    Method::POST,
                    &format!("/networks/{network}/disconnect"),
                    Some(&req),
                )
                .await?;
        }
        NetworkAction::Rm { networks } => {
            let mut failed = false;
            for n in networks {
                match client
                    .call::<()>(Method::DELETE, &format!("/networks/{n}"), NO_BODY)
                    .await
                {
                    Ok(()) => out!("{n}"),
                    Err(e) => {
                        eprintln!("ferry: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
