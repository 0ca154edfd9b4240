//! `ferry`: the command-line client of ferryd, with Docker's verbs.

/// `println!` that hands a failed write back (`?`) instead of
/// panicking: a reader that went away (`ferry ... | head`) ends the
/// command quietly (see `main`).
macro_rules! out {
    () => {{
        use std::io::Write as _;
        writeln!(std::io::stdout())?
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

mod attach;
mod credentials;
mod engines;
mod images;
mod networks;
mod nodes;
mod run;
mod stats;
mod system;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferry::{
    api::{ContainerJson, DatapathJson, ExecRequest, WaitResponse},
    client::{Client, ClientError},
    config,
    conntrack::Flow,
    format::render,
};
use http_body_util::BodyExt as _;
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
    Run(Box<run::RunArgs>),
    /// List images.
    Images {
        /// Only IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Load images from a `docker save` archive or an OCI image layout.
    Load {
        /// The archive (default: standard input).
        #[arg(short, long)]
        input: Option<PathBuf>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Pull an image from a registry.
    Pull {
        #[arg(short, long)]
        quiet: bool,
        name: String,
    },
    /// Check credentials with a registry and store them for pulls.
    Login(credentials::LoginArgs),
    /// Disk usage, and removing what nothing uses.
    System {
        #[command(subcommand)]
        action: system::SystemAction,
    },
    /// Operations on containers as a whole.
    Container {
        #[command(subcommand)]
        action: ContainerAction,
    },
    /// Forget a registry's stored credentials.
    Logout {
        /// The registry (host[:port]); default Docker Hub.
        server: Option<String>,
    },
    /// Write images to a tar (an OCI layout with Docker's manifest.json).
    Save {
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove images.
    Rmi {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Manage images.
    Image {
        #[command(subcommand)]
        action: images::ImageAction,
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
    /// Live CPU, memory, process and network usage of containers.
    Stats {
        /// Print once and exit.
        #[arg(long)]
        no_stream: bool,
        /// Print one sample as JSON (implies --no-stream).
        #[arg(long)]
        json: bool,
        containers: Vec<String>,
    },
    /// Print a container's output.
    Logs {
        /// Keep printing new output until the container exits.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines ("all" for everything).
        #[arg(short = 'n', long, default_value = "all")]
        tail: String,
        container: String,
    },
    /// Attach to a running container's streams; exits with its exit code
    /// (ctrl-p ctrl-q detaches and leaves it running).
    Attach { container: String },
    /// Run a command in a running container; exits with its exit code.
    Exec {
        /// Send our stdin to it.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// A terminal for it (raw mode here; ctrl-p ctrl-q detaches).
        #[arg(short = 't', long)]
        tty: bool,
        /// Environment variable KEY=VALUE (repeatable).
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Working directory inside the container.
        #[arg(short = 'w', long = "workdir")]
        workdir: Option<String>,
        container: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Send a signal to containers' main process.
    Kill {
        /// Signal name or number.
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Wait for containers to exit and print their exit codes.
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Tracked flows (published ports and masquerade).
    Conntrack {
        #[command(subcommand)]
        action: ConntrackAction,
    },
    /// Switch debug output at run time.
    Debug {
        #[command(subcommand)]
        what: DebugTarget,
    },
    /// The datapath: pinned objects, endpoints, drops by reason.
    Datapath {
        #[arg(long)]
        json: bool,
    },
    /// User-defined networks.
    Network {
        #[command(subcommand)]
        action: networks::NetworkAction,
    },
    /// The cluster's members (ferryd --cluster).
    Node {
        #[command(subcommand)]
        action: nodes::NodeAction,
    },
    /// Endpoints other engines made on ferry's networks.
    Endpoint {
        #[command(subcommand)]
        action: engines::EndpointAction,
    },
    /// The CNI plugin, for podman, containerd and Kubernetes.
    Cni {
        #[command(subcommand)]
        action: engines::CniAction,
    },
}

#[derive(Subcommand)]
enum ContainerAction {
    /// Remove every stopped container.
    Prune {
        /// Do not ask.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum DebugTarget {
    /// The eBPF programs log every drop (with its reason) and every new
    /// translated flow into ferryd's log; off by default, switched without
    /// reloading anything.
    Datapath {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Subcommand)]
enum ConntrackAction {
    /// List flows with their translation, state, idle time and expiry.
    List {
        /// Only flows of this container.
        #[arg(long)]
        container: Option<String>,
        /// Only tcp, udp or icmp flows.
        #[arg(long)]
        proto: Option<String>,
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
        // The reader of the output went away (`ferry ... | head`): what it
        // wanted it has; nothing to say.
        Err(err) if broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry: {}", ferry::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// Whether `err` is a write to a pipe whose reader has gone.
fn broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

const NO_BODY: Option<&()> = None;

/// `-e KEY` takes KEY's value from this environment, and is left out when
/// KEY is not set (Docker's rule); `-e KEY=VALUE` is passed as is.
fn resolve_env(entries: Vec<String>) -> Vec<String> {
    entries
        .into_iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e)
            } else {
                std::env::var_os(&e).map(|v| format!("{e}={}", v.to_string_lossy()))
            }
        })
        .collect()
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.host);
    match args.command {
        Command::Run(args) => {
            let detach = args.detach;
            let rm = args.rm;
            let req = run::request(&client, *args).await?;
            let c: ContainerJson = client
                .call(Method::POST, "/containers/run", Some(&req))
                .await?;
            if detach {
                out!("{}", c.id);
            } else if c.config.tty || c.config.open_stdin {
                let mode = attach::Mode {
                    tty: c.config.tty,
                    stdin: c.config.open_stdin,
                };
                return interactive(&client, &c.id, rm, mode).await;
            } else {
                return attached(&client, &c.id, rm).await;
            }
        }
        Command::Ps { all, quiet } => {
            let list: Vec<ContainerJson> = client
                .call(Method::GET, &format!("/containers/json?all={all}"), NO_BODY)
                .await?;
            if quiet {
                for c in &list {
                    out!("{}", &c.id[..12]);
                }
            } else {
                out!(
                    "{:<14}{:<20}{:<22}{:<10}{:<16}{:<16}COMMAND",
                    "CONTAINER ID",
                    "NAME",
                    "IMAGE",
                    "STATUS",
                    "IP",
                    "HOST VETH"
                );
                for c in &list {
                    let status = if c.state.running {
                        "running".to_owned()
                    } else if c.state.oom_killed {
                        format!("oom({})", c.state.exit_code)
                    } else {
                        format!("exited({})", c.state.exit_code)
                    };
                    // What the root is: the image as named, the --rootfs
                    // directory, or an overlay of the host's root.
                    let image = match (c.config.image.as_str(), c.host_config.rootfs.as_str()) {
                        ("", "" | "host") => "(host root)",
                        ("", dir) => dir,
                        (image, _) => image,
                    };
                    out!(
                        "{:<14}{:<20}{:<22}{:<10}{:<16}{:<16}{}",
                        &c.id[..12],
                        c.name,
                        image,
                        status,
                        c.network_settings.ip_address,
                        c.ferry.host_veth,
                        c.config.cmd.join(" ")
                    );
                }
                engines::others_in_ps(&client).await?;
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
                        out!("{}", render(template, &serde_json::to_value(c)?)?);
                    }
                }
                None => out!("{}", serde_json::to_string_pretty(&out)?),
            }
            if missing {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Port { container } => {
            let found = client
                .call::<ContainerJson>(
                    Method::GET,
                    &format!("/containers/{container}/json"),
                    NO_BODY,
                )
                .await;
            let c = match found {
                Ok(c) => c,
                Err(ClientError::Api { status, .. })
                    if status == hyper::StatusCode::NOT_FOUND
                        && engines::endpoint_port(&client, &container).await? =>
                {
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => return Err(e.into()),
            };
            for (port, bindings) in &c.network_settings.ports {
                for b in bindings {
                    out!("{port} -> {}:{}", b.host_ip, b.host_port);
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
            no_stream,
            json,
            containers,
        } => return stats::stats(&client, containers, no_stream || json, json).await,
        Command::Logs {
            follow,
            tail,
            container,
        } => {
            print_logs(&client, &container, follow, &tail).await?;
        }
        Command::Attach { container } => {
            let c: ContainerJson = client
                .call(
                    Method::GET,
                    &format!("/containers/{container}/json"),
                    NO_BODY,
                )
                .await?;
            let mode = attach::Mode {
                tty: c.config.tty,
                stdin: c.config.open_stdin,
            };
            mode.check()?;
            return interactive(&client, &c.id, false, mode).await;
        }
        Command::Exec {
            interactive,
            tty,
            env,
            workdir,
            container,
            cmd,
        } => {
            let mode = attach::Mode {
                tty,
                stdin: interactive,
            };
            mode.check()?;
            let req = ExecRequest {
                cmd,
                env: resolve_env(env),
                working_dir: workdir.unwrap_or_default(),
                tty,
                attach_stdin: interactive,
                console_size: mode.size(),
            };
            let path = format!("/containers/{container}/exec");
            if tty || interactive {
                let conn = client.take_over(&path, Some(&req)).await?;
                return Ok(match attach::session(conn, mode).await? {
                    attach::Ended::Closed(code) => {
                        let code = code.context("the exec ended without an exit status")?;
                        ExitCode::from(code.clamp(0, 255) as u8)
                    }
                    attach::Ended::Detached => ExitCode::SUCCESS,
                });
            }
            let body = client
                .stream(
                    Method::POST,
                    &format!("/containers/{container}/exec"),
                    Some(&req),
                )
                .await?;
            let code = print_frames(body)
                .await?
                .context("the exec ended without an exit status")?;
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        Command::Debug {
            what: DebugTarget::Datapath { state },
        } => {
            let r: serde_json::Value = client
                .call(
                    Method::POST,
                    &format!("/datapath/debug?on={}", state == "on"),
                    NO_BODY,
                )
                .await?;
            let on = r["DebugLog"].as_bool().unwrap_or(false);
            out!(
                "datapath debug logging {} (in ferryd's log)",
                if on { "on" } else { "off" }
            );
        }
        Command::Kill { signal, containers } => {
            return each(&containers, |c| {
                let path = format!("/containers/{c}/kill?signal={signal}");
                let client = &client;
                async move { client.call::<()>(Method::POST, &path, NO_BODY).await }
            })
            .await;
        }
        Command::Wait { containers } => {
            let mut code = ExitCode::SUCCESS;
            for c in &containers {
                match client
                    .call::<WaitResponse>(Method::POST, &format!("/containers/{c}/wait"), NO_BODY)
                    .await
                {
                    Ok(w) => out!("{}", w.status_code),
                    Err(e) => {
                        eprintln!("ferry: {e}");
                        code = ExitCode::FAILURE;
                    }
                }
            }
            return Ok(code);
        }
        Command::Network { action } => return networks::network(&client, action).await,
        Command::Images { quiet } => {
            return images::image(&client, images::ImageAction::Ls { quiet }).await;
        }
        Command::Load { input, quiet } => {
            return images::image(&client, images::ImageAction::Load { input, quiet }).await;
        }
        Command::Pull { quiet, name } => {
            return images::image(&client, images::ImageAction::Pull { quiet, name }).await;
        }
        Command::Login(args) => return credentials::login(&client, args).await,
        Command::System { action } => return system::system(&client, action).await,
        Command::Container {
            action: ContainerAction::Prune { force },
        } => return system::container_prune(&client, force).await,
        Command::Logout { server } => return credentials::logout(server.as_deref()),
        Command::Save { output, images } => {
            return images::image(&client, images::ImageAction::Save { output, images }).await;
        }
        Command::Rmi { force, images } => {
            return images::image(&client, images::ImageAction::Rm { force, images }).await;
        }
        Command::Tag { source, target } => {
            return images::image(&client, images::ImageAction::Tag { source, target }).await;
        }
        Command::Image { action } => return images::image(&client, action).await,
        Command::Endpoint { action } => engines::endpoint(&client, action).await?,
        Command::Cni { action } => engines::cni(action, &args.host)?,
        Command::Conntrack { action } => match action {
            ConntrackAction::List {
                container,
                proto,
                json,
            } => {
                let mut query = Vec::new();
                if let Some(c) = container {
                    query.push(format!("container={c}"));
                }
                if let Some(p) = proto {
                    query.push(format!("proto={p}"));
                }
                let flows: Vec<Flow> = client
                    .call(
                        Method::GET,
                        &format!("/conntrack?{}", query.join("&")),
                        NO_BODY,
                    )
                    .await?;
                if json {
                    out!("{}", serde_json::to_string_pretty(&flows)?);
                } else {
                    out!(
                        "{:<6}{:<6}{:<23}{:<23}{:<23}{:<13}{:<8}{:<7}EXPIRES",
                        "PROTO",
                        "NAT",
                        "SOURCE",
                        "DESTINATION",
                        "TRANSLATED",
                        "STATE",
                        "ASSURED",
                        "IDLE"
                    );
                    for f in &flows {
                        out!(
                            "{:<6}{:<6}{:<23}{:<23}{:<23}{:<13}{:<8}{:<7}{}s",
                            f.proto,
                            f.nat,
                            f.src,
                            f.dst,
                            f.translated,
                            f.state,
                            if f.assured { "yes" } else { "no" },
                            format!("{}s", f.idle_seconds),
                            f.expires_in_seconds
                        );
                    }
                }
            }
            ConntrackAction::Flush => {
                let r: serde_json::Value =
                    client.call(Method::DELETE, "/conntrack", NO_BODY).await?;
                out!("removed {} entries", r["Removed"]);
            }
        },
        Command::Node { action } => return nodes::node(&client, action).await,
        Command::Datapath { json } => {
            let d: DatapathJson = client.call(Method::GET, "/datapath", NO_BODY).await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                out!("pinned under: {}", d.pin_dir);
                out!("debug log:    {}", if d.debug_log { "on" } else { "off" });
                out!("endpoints:    {}", d.endpoints);
                let ct = &d.conntrack;
                out!(
                    "conntrack:    {} entries, {} of them assured; {} created, {} promoted, {} \
                     removed by GC/flush",
                    ct.entries,
                    ct.assured,
                    ct.created,
                    ct.promoted,
                    ct.removed
                );
                out!(
                    "  evicted:    {} unassured, {} assured; {} promotions refused (ct full)",
                    ct.evicted_unassured,
                    ct.evicted_assured,
                    ct.assured_full
                );
                out!("\nattached programs:");
                for a in &d.attachments {
                    let hook = if a.mode.is_empty() {
                        a.hook.clone()
                    } else {
                        format!("{} ({})", a.hook, a.mode)
                    };
                    out!("  {:<34}{:<20}{hook}", a.target, a.program);
                }
                out!("\nmaps:");
                for m in &d.maps {
                    let fill = m.entries as f64 * 100.0 / f64::from(m.capacity.max(1));
                    out!(
                        "  {:<16}{:<14}{:>9} / {:<9}{fill:>6.1}%",
                        m.name,
                        m.kind,
                        m.entries,
                        m.capacity
                    );
                }
                out!("\ndrops by reason:");
                for (reason, n) in &d.drops {
                    out!("  {reason:<22}{n}");
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
            Ok(()) => out!("{c}"),
            Err(e) => {
                eprintln!("ferry: {e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

/// `ferry run` without -d: prints the workload's output as it comes,
/// forwards ^C and SIGTERM to it, and exits with its exit code.
async fn attached(client: &Client, id: &str, rm: bool) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let output = print_logs(client, id, true, "all");
    tokio::pin!(output);
    loop {
        let forwarded = tokio::select! {
            done = &mut output => {
                done?;
                break;
            }
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        // The container may be gone already; its exit code tells.
        let _ = client
            .call::<()>(
                Method::POST,
                &format!("/containers/{id}/kill?signal={forwarded}"),
                NO_BODY,
            )
            .await;
    }
    exit_status(client, id, rm).await
}

/// `ferry run -i/-t` and `ferry attach`: a session with the container's
/// streams, then its exit code (or 0 on detach, the container running).
async fn interactive(
    client: &Client,
    id: &str,
    rm: bool,
    mode: attach::Mode,
) -> anyhow::Result<ExitCode> {
    let conn = client
        .take_over(&format!("/containers/{id}/attach"), NO_BODY)
        .await?;
    if let attach::Ended::Detached = attach::session(conn, mode).await? {
        return Ok(ExitCode::SUCCESS);
    }
    exit_status(client, id, rm).await
}

/// Waits for the container; removes it if asked; its exit code.
async fn exit_status(client: &Client, id: &str, rm: bool) -> anyhow::Result<ExitCode> {
    let status: WaitResponse = client
        .call(Method::POST, &format!("/containers/{id}/wait"), NO_BODY)
        .await?;
    if rm {
        client
            .call::<()>(Method::DELETE, &format!("/containers/{id}"), NO_BODY)
            .await?;
    }
    Ok(ExitCode::from(status.status_code.clamp(0, 255) as u8))
}

/// Copies a container's log to stdout and stderr, stream by stream.
async fn print_logs(client: &Client, id: &str, follow: bool, tail: &str) -> anyhow::Result<()> {
    let body = client
        .stream(
            Method::GET,
            &format!("/containers/{id}/logs?follow={follow}&tail={tail}"),
            NO_BODY,
        )
        .await?;
    print_frames(body).await.map(|_| ())
}

/// Writes multiplexed frames to stdout and stderr; returns the exit code
/// if the stream carried one (exec).
async fn print_frames(mut body: hyper::body::Incoming) -> anyhow::Result<Option<i32>> {
    let mut out = attach::Frames::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("reading the log: {e}"))?;
        if let Ok(data) = frame.into_data() {
            out.print(&data).await?;
        }
    }
    Ok(out.exit)
}
