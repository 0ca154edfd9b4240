//! Operations on existing containers: list, inspect, stop, remove, stats,
//! wait, kill, exec, logs.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::sync::watch;
use tracing::info;

use super::Daemon;
use crate::{
    api::{ApiError, ContainerJson, ExecRequest, Stats, WaitResponse},
    attach::{self, StdioSpec},
    container::{self, ExecSpec, Privileges},
    state::{ContainerRecord, Status},
    validate,
};

impl Daemon {
    pub async fn list(&self, all: bool) -> Vec<ContainerRecord> {
        let inner = self.inner.lock().await;
        let mut list: Vec<_> = inner
            .containers
            .values()
            .filter(|c| all || c.status == Status::Running)
            .cloned()
            .collect();
        list.sort_by_key(|c| std::cmp::Reverse(c.created));
        list
    }

    pub async fn inspect(&self, reference: &str) -> Result<ContainerRecord, ApiError> {
        let inner = self.inner.lock().await;
        inner.find(reference).cloned()
    }

    /// The stop signal (SIGTERM, or the image's `StopSignal`), then SIGKILL
    /// after `timeout` seconds, as `docker stop`.
    pub async fn stop(&self, reference: &str, timeout: u64) -> Result<(), ApiError> {
        let (pid, first, mut exited) = {
            let inner = self.inner.lock().await;
            let record = inner.find(reference)?;
            let (Some(pid), Some(tx)) = (record.pid, inner.exits.get(&record.id)) else {
                return Ok(());
            };
            let first = match record.stop_signal.as_str() {
                "" => Signal::SIGTERM,
                name => parse_signal(name)?,
            };
            (pid, first, tx.subscribe())
        };
        let signals = [
            (Some(first), Duration::from_secs(timeout)),
            (None, Duration::from_secs(30)),
        ];
        for (signal, wait) in signals {
            if timeout == 0 && signal.is_some() {
                continue;
            }
            let signal = signal.unwrap_or(Signal::SIGKILL);
            if let Err(e) = kill(Pid::from_raw(pid as i32), signal)
                && e != nix::Error::ESRCH
            {
                return Err(ApiError::Internal(format!(
                    "cannot signal {reference}: {e}"
                )));
            }
            if tokio::time::timeout(wait, exited.wait_for(Option::is_some))
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(ApiError::Internal(format!(
            "container {reference} did not exit after SIGKILL"
        )))
    }

    pub async fn remove(&self, reference: &str, force: bool) -> Result<(), ApiError> {
        let running = {
            let inner = self.inner.lock().await;
            inner.find(reference)?.status == Status::Running
        };
        if running {
            if !force {
                return Err(ApiError::Conflict(format!(
                    "container {reference} is running: stop it first or use ferry rm -f"
                )));
            }
            self.stop(reference, 0).await?;
        }
        let mut inner = self.inner.lock().await;
        let Ok(mut record) = inner.find(reference).cloned() else {
            // It ran with --rm and is gone already.
            return Ok(());
        };
        inner.remove_cgroups(&record.id).await;
        inner.teardown_network(&mut record).await;
        inner
            .store
            .remove(&record.id)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        inner.containers.remove(&record.id);
        info!(id = %record.short_id(), "container removed");
        Ok(())
    }

    pub async fn stats(&self, reference: &str) -> Result<Stats, ApiError> {
        let mut inner = self.inner.lock().await;
        let record = inner.find(reference)?.clone();
        let mut stats = Stats {
            usage: inner.cgroups.usage(&record.id),
            read_ns: nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
                t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
            }),
            ..Stats::default()
        };
        stats.net = inner.counters(&record)?;
        Ok(stats)
    }

    /// `ferry inspect`: the record, plus the datapath programs on the
    /// container's veth and its counters.
    pub async fn inspect_json(&self, reference: &str) -> Result<ContainerJson, ApiError> {
        let mut inner = self.inner.lock().await;
        let record = inner.find(reference)?.clone();
        let mut json = ContainerJson::from(&record);
        if let Some(net) = &record.network {
            json.ferry.programs = inner
                .agent
                .datapath
                .attachments()
                .into_iter()
                .filter(|a| a.target == net.host_ifname)
                .map(|a| format!("{} ({})", a.program, a.hook))
                .collect();
        }
        for (name, endpoint) in &mut json.network_settings.networks {
            if let Ok(def) = inner.agent.networks.find(name) {
                endpoint.network_id.clone_from(&def.id);
            }
        }
        json.ferry.counters = inner.counters(&record)?;
        json.ferry.port_counters = inner
            .port_counters(&record)?
            .into_iter()
            .map(|(m, c)| {
                let ip = m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
                (format!("{ip}:{}/{}", m.host_port, m.proto), c)
            })
            .collect();
        Ok(json)
    }

    /// Blocks until the container has exited; its exit code.
    pub async fn wait(&self, reference: &str) -> Result<WaitResponse, ApiError> {
        let (id, mut exited) = {
            let inner = self.inner.lock().await;
            let record = inner.find(reference)?;
            match inner.exits.get(&record.id) {
                Some(tx) => (record.id.clone(), tx.subscribe()),
                None => {
                    return Ok(WaitResponse {
                        status_code: record.exit_code.unwrap_or(0),
                        oom_killed: record.oom_killed,
                    });
                }
            }
        };
        let code = exited
            .wait_for(Option::is_some)
            .await
            .map(|c| c.unwrap_or(0))
            .map_err(|_| ApiError::Internal(format!("lost track of container {reference}")))?;
        let inner = self.inner.lock().await;
        Ok(WaitResponse {
            status_code: code,
            oom_killed: inner.containers.get(&id).is_some_and(|c| c.oom_killed),
        })
    }

    /// Sends `signal` to the container's PID 1.
    pub async fn kill(&self, reference: &str, signal: &str) -> Result<(), ApiError> {
        let signal = parse_signal(signal)?;
        let inner = self.inner.lock().await;
        let record = inner.find(reference)?;
        let Some(pid) = record.pid.filter(|_| record.status == Status::Running) else {
            return Err(ApiError::Conflict(format!(
                "container {reference} is not running"
            )));
        };
        kill(Pid::from_raw(pid as i32), signal)
            .map_err(|e| ApiError::Internal(format!("cannot signal {reference}: {e}")))
    }

    /// Starts a command in a running container (see `container::exec_main`).
    /// Returns the helper (the command ends when it is dropped) and the
    /// socket with the command's streams: frames, then one exit frame; and
    /// frames the other way for its stdin and terminal (see `attach`).
    pub async fn exec(
        &self,
        reference: &str,
        req: ExecRequest,
    ) -> Result<(tokio::process::Child, tokio::net::UnixStream), ApiError> {
        validate::exec_request(&req)?;
        let spec = {
            let inner = self.inner.lock().await;
            let record = inner.find(reference)?;
            let Some(pid) = record.pid.filter(|_| record.status == Status::Running) else {
                return Err(ApiError::Conflict(format!(
                    "container {reference} is not running"
                )));
            };
            let workdir = match (req.working_dir.as_str(), record.working_dir.as_str()) {
                ("", "") => PathBuf::from("/"),
                ("", own) => PathBuf::from(own),
                (dir, _) if dir.starts_with('/') => PathBuf::from(dir),
                (dir, _) => {
                    return Err(ApiError::BadRequest(format!(
                        "the working directory {dir:?} is invalid: it needs to be an absolute path"
                    )));
                }
            };
            ExecSpec {
                pid,
                cgroup_procs: inner.cgroups.procs_files(&record.id),
                cmd: req.cmd,
                env: record.env.iter().cloned().chain(req.env).collect(),
                workdir,
                hostname: record.hostname.clone(),
                privileges: Privileges {
                    user: record.user.clone(),
                    seccomp: super::containers::seccomp_of(&record.host_config)?,
                    caps: super::containers::caps_of(&record.host_config)?,
                },
                stdio: StdioSpec {
                    tty: req.tty,
                    open_stdin: req.attach_stdin,
                    console_size: req.console_size.map(|[rows, cols]| (rows, cols)),
                },
                userns: record.userns.is_some(),
            }
        };
        container::spawn_exec(&spec)
            .await
            .map_err(ApiError::Internal)
    }

    /// Connects to a running container's streams (see `attach`).
    pub async fn attach(&self, reference: &str) -> Result<tokio::net::UnixStream, ApiError> {
        let path = {
            let inner = self.inner.lock().await;
            let record = inner.find(reference)?;
            if record.status != Status::Running {
                return Err(ApiError::Conflict(format!(
                    "container {reference} is not running"
                )));
            }
            inner.store.attach_path(&record.id)
        };
        let internal =
            |e: std::io::Error| ApiError::Internal(format!("cannot attach to {reference}: {e}"));
        let sock = attach::with_short_path(&path, |p| std::os::unix::net::UnixStream::connect(p))
            .map_err(internal)?;
        sock.set_nonblocking(true).map_err(internal)?;
        tokio::net::UnixStream::from_std(sock).map_err(internal)
    }

    /// The container's log file and, while it runs, a receiver that says
    /// when it has exited (its output is complete then).
    pub async fn log_source(
        &self,
        reference: &str,
    ) -> Result<(PathBuf, Option<watch::Receiver<Option<i32>>>), ApiError> {
        let inner = self.inner.lock().await;
        let record = inner.find(reference)?;
        Ok((
            inner.store.log_path(&record.id),
            inner.exits.get(&record.id).map(watch::Sender::subscribe),
        ))
    }
}

pub(super) fn parse_signal(name: &str) -> Result<Signal, ApiError> {
    let bad = || ApiError::BadRequest(format!("invalid signal: {name}"));
    if let Ok(n) = name.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>().map_err(|_| bad())
}
