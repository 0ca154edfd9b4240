//! `ferry`: the command-line client of ferryd, with Docker's verbs.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use ferry::{
    api::{ContainerJson, DatapathJson, NetStats, RunRequest},
    client::Client,
    config,
    conntrack::Flow,
    format::render,
};
use hyper::Method;

#[derive(Parser)]
#[command(
    version,
    about = "ferry: containers with bridge isolation at host-network speed"
)]
struct Args {
    /// ferryd's API socket.
    #[arg(long, short = 'H', env = "FERRY_HOST", default_value = config::DEFAULT_SOCKET)]
    host: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create and start a container.
    #[command(disable_help_flag = true)]
    Run {
        /// Print help (`-h` is the hostname, as in Docker).
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        /// Run in the background and print the container ID.
        #[arg(short = 'd', long)]
        detach: bool,
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
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// List containers.
    Ps {
        /// Show exited containers too.
        #[arg(short, long)]
        all: bool,
        /// Only IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print containers' details as JSON.
    Inspect {
        /// Print only these fields, e.g. '{{.State.Pid}}'.
        #[arg(short, long)]
        format: Option<String>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List a container's published ports.
    Port { container: String },
    /// Stop containers (SIGTERM, then SIGKILL after the timeout).
    Stop {
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill running containers first.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Network counters of containers, from the datapath.
    Stats {
        /// Print once and exit (the only mode so far).
        #[arg(long)]
        no_stream: bool,
        containers: Vec<String>,
    },
    /// Tracked flows (published ports and masquerade).
    Conntrack {
        #[command(subcommand)]
        action: ConntrackAction,
    },
    /// The datapath: pinned objects, endpoints, drops by reason.
    Datapath {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConntrackAction {
    /// List flows with their translation, state and idle time.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Forget every flow.
    Flush,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ferry: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ferry: {err:#}");
            ExitCode::FAILURE
        }
    }
}

const NO_BODY: Option<&()> = None;

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.host);
    match args.command {
        Command::Run {
            detach,
            name,
            hostname,
            env,
            publish,
            cmd,
            ..
        } => {
            if !detach {
                anyhow::bail!(
                    "attached mode is not available yet: use ferry run -d, then ferry inspect"
                );
            }
            let req = RunRequest {
                name,
                hostname,
                env,
                publish,
                cmd,
            };
            let c: ContainerJson = client
                .call(Method::POST, "/containers/run", Some(&req))
                .await?;
            println!("{}", c.id);
        }
        Command::Ps { all, quiet } => {
            let list: Vec<ContainerJson> = client
                .call(Method::GET, &format!("/containers/json?all={all}"), NO_BODY)
                .await?;
            if quiet {
                for c in &list {
                    println!("{}", &c.id[..12]);
                }
            } else {
                println!(
                    "{:<14}{:<20}{:<10}{:<16}{:<16}COMMAND",
                    "CONTAINER ID", "NAME", "STATUS", "IP", "HOST VETH"
                );
                for c in &list {
                    let status = if c.state.running {
                        "running".to_owned()
                    } else {
                        format!("exited({})", c.state.exit_code)
                    };
                    println!(
                        "{:<14}{:<20}{:<10}{:<16}{:<16}{}",
                        &c.id[..12],
                        c.name,
                        status,
                        c.network_settings.ip_address,
                        c.ferry.host_veth,
                        c.config.cmd.join(" ")
                    );
                }
            }
        }
        Command::Inspect { format, containers } => {
            let mut out = Vec::new();
            let mut missing = false;
            for c in containers {
                match client
                    .call::<ContainerJson>(Method::GET, &format!("/containers/{c}/json"), NO_BODY)
                    .await
                {
                    Ok(json) => out.push(json),
                    Err(e) => {
                        eprintln!("ferry: {e}");
                        missing = true;
                    }
                }
            }
            match &format {
                Some(template) => {
                    for c in &out {
                        println!("{}", render(template, &serde_json::to_value(c)?)?);
                    }
                }
                None => println!("{}", serde_json::to_string_pretty(&out)?),
            }
            if missing {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Port { container } => {
            let c: ContainerJson = client
                .call(
                    Method::GET,
                    &format!("/containers/{container}/json"),
                    NO_BODY,
                )
                .await?;
            for (port, bindings) in &c.network_settings.ports {
                for b in bindings {
                    println!("{port} -> {}:{}", b.host_ip, b.host_port);
                }
            }
        }
        Command::Stop { time, containers } => {
            return each(&containers, |c| {
                let path = format!("/containers/{c}/stop?t={time}");
                let client = &client;
                async move { client.call::<()>(Method::POST, &path, NO_BODY).await }
            })
            .await;
        }
        Command::Rm { force, containers } => {
            return each(&containers, |c| {
                let path = format!("/containers/{c}?force={force}");
                let client = &client;
                async move { client.call::<()>(Method::DELETE, &path, NO_BODY).await }
            })
            .await;
        }
        Command::Stats {
            no_stream: _,
            containers,
        } => {
            let names = if containers.is_empty() {
                let list: Vec<ContainerJson> = client
                    .call(Method::GET, "/containers/json", NO_BODY)
                    .await?;
                list.into_iter().map(|c| c.name).collect()
            } else {
                containers
            };
            println!(
                "{:<20}{:>12}{:>14}{:>12}{:>14}",
                "NAME", "RX PACKETS", "RX BYTES", "TX PACKETS", "TX BYTES"
            );
            for name in names {
                let s: NetStats = client
                    .call(Method::GET, &format!("/containers/{name}/stats"), NO_BODY)
                    .await?;
                println!(
                    "{:<20}{:>12}{:>14}{:>12}{:>14}",
                    name, s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes
                );
            }
        }
        Command::Conntrack { action } => match action {
            ConntrackAction::List { json } => {
                let flows: Vec<Flow> = client.call(Method::GET, "/conntrack", NO_BODY).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&flows)?);
                } else {
                    println!(
                        "{:<6}{:<6}{:<23}{:<23}{:<23}{:<13}IDLE",
                        "PROTO", "NAT", "SOURCE", "DESTINATION", "TRANSLATED", "STATE"
                    );
                    for f in &flows {
                        println!(
                            "{:<6}{:<6}{:<23}{:<23}{:<23}{:<13}{}s",
                            f.proto, f.nat, f.src, f.dst, f.translated, f.state, f.idle_seconds
                        );
                    }
                }
            }
            ConntrackAction::Flush => {
                let r: serde_json::Value =
                    client.call(Method::DELETE, "/conntrack", NO_BODY).await?;
                println!("removed {} entries", r["Removed"]);
            }
        },
        Command::Datapath { json } => {
            let d: DatapathJson = client.call(Method::GET, "/datapath", NO_BODY).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("pinned under: {}", d.pin_dir);
                println!("programs:     {}", d.programs.join(", "));
                println!("endpoints:    {}", d.endpoints);
                println!("drops:");
                for (reason, n) in &d.drops {
                    println!("  {reason:<18}{n}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Applies an operation to each container like Docker does: prints the
/// reference on success, the error on failure, and fails if any failed.
async fn each<F, Fut>(containers: &[String], op: F) -> anyhow::Result<ExitCode>
where
    F: Fn(&str) -> Fut,
    Fut: std::future::Future<Output = Result<(), ferry::client::ClientError>>,
{
    let mut code = ExitCode::SUCCESS;
    for c in containers {
        match op(c).await {
            Ok(()) => println!("{c}"),
            Err(e) => {
                eprintln!("ferry: {e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}
