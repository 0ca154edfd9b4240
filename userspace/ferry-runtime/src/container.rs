//! Container processes: the init stage (the container's monitor) and the
//! handshake with ferryd.
//!
//! ferryd re-executes itself as the init stage (`ferryd __init`) in new UTS,
//! IPC, network and PID namespaces, with a control socket on fd 3. The init
//! stage waits there while ferryd wires the network namespace, then receives
//! the spec, sets the hostname and forks the workload, which becomes PID 1
//! of the new PID namespace. The workload joins its cgroups, enters its own
//! mount namespace, builds its root (see `rootfs`), drops to Docker's
//! default capabilities with no_new_privs, and execs. The init stage reports
//! the workload's PID (or why exec failed) and stays as the container's
//! monitor, in the spirit of containerd-shim: it owns the workload's
//! streams (pipes, or a terminal the workload opens inside the container
//! and passes back), writes its output to the container's log and to
//! whoever attaches (see `attach`), waits for the workload and records
//! its exit status in a file. It does not depend on ferryd, so a container
//! keeps running and its exit code is kept while ferryd is down.

use std::{
    ffi::CString,
    fs::File,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::{net::UnixStream, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::{
    fcntl::{FcntlArg, FdFlag, fcntl},
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
    sys::wait::{WaitStatus, waitpid},
    unistd::{
        ForkResult, Pid, dup2_stderr, dup2_stdin, dup2_stdout, execvpe, fork, pipe2, sethostname,
    },
};
use serde::{Deserialize, Serialize};

pub use crate::privileges::Privileges;
use crate::{
    attach::{self, Relay, StdioSpec, Streams},
    logs::{self, Stream},
    rootfs::{self, RootfsSpec},
    userns::{self, IdMap},
};

/// The hidden first argument that turns `ferryd` into the init stage.
pub const INIT_ARG: &str = "__init";
/// The control socket's fd in the init stage.
const CONTROL_FD: i32 = 3;
/// The user namespace's fd in the init stage, with `--userns-remap`.
const USERNS_FD: i32 = 4;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the container's init stage: {0}")]
    Spawn(#[source] io::Error),
    #[error("init stage handshake failed: {0}")]
    Handshake(String),
    #[error("cannot run {cmd:?}: {reason}")]
    Exec { cmd: String, reason: String },
}

/// What the init stage needs once the network is ready.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitSpec {
    pub hostname: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    #[serde(flatten)]
    pub privileges: Privileges,
    #[serde(default)]
    pub stdio: StdioSpec,
    /// `cgroup.procs` files the workload joins before exec.
    pub cgroup_procs: Vec<PathBuf>,
    /// The container's log (JSON lines, see `logs`).
    pub log: PathBuf,
    /// Where peers attach to the workload's streams (see `attach`).
    #[serde(default)]
    pub attach_socket: Option<PathBuf>,
    /// `--userns-remap`: the container's ids on the host (see `userns`).
    #[serde(default)]
    pub userns: Option<IdMap>,
    /// Settings of the container's own network namespace, as
    /// `net.ipv4.ip_unprivileged_port_start` = `0`.
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// Where the monitor records the exit status.
    pub exit_file: PathBuf,
    pub rootfs: RootfsSpec,
}

/// How the workload ended, as the monitor recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExitRecord {
    /// As a shell reports it: the exit status, or 128 + the signal.
    pub exit_code: i32,
    /// Unix seconds.
    pub finished_at: u64,
}

impl ExitRecord {
    /// Reads the record the monitor left, if it got that far.
    pub fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }
}

/// The network namespace the container gets.
#[derive(Debug, Clone, Copy)]
pub enum MonitorNet<'a> {
    /// A new one (ferry's datapath, or `--network none`).
    New,
    /// ferryd's own (`--network host`).
    Host,
    /// Another container's (`--network container:<id>`).
    Join(BorrowedFd<'a>),
}

/// A started init stage, still waiting for its spec.
pub struct Monitor {
    pub pid: u32,
    control: UnixStream,
}

/// Starts the init stage in fresh namespaces. `diagnostics` receives what
/// the monitor itself has to say (never the workload's output).
pub fn spawn_monitor(
    diagnostics: &Path,
    net: MonitorNet,
    userns: Option<BorrowedFd>,
) -> Result<Monitor, ContainerError> {
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(diagnostics)
        .map_err(|source| ContainerError::Open {
            path: diagnostics.display().to_string(),
            source,
        })?;
    let (ours, theirs) = UnixStream::pair().map_err(ContainerError::Spawn)?;
    let theirs_fd = theirs.as_raw_fd();
    let userns_fd = userns.map(|fd| fd.as_raw_fd());
    let (new_net, join_fd) = match net {
        MonitorNet::New => (CloneFlags::CLONE_NEWNET, None),
        MonitorNet::Host => (CloneFlags::empty(), None),
        MonitorNet::Join(fd) => (CloneFlags::empty(), Some(fd.as_raw_fd())),
    };
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(INIT_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (dup2, fcntl, setsid, setns, unshare).
    // `join_fd` stays open until `spawn` returns: the caller borrows it.
    unsafe {
        cmd.pre_exec(move || {
            onto_control_fd(theirs_fd)?;
            // dup2 leaves the copy inheritable; the init stage closes it on
            // exec of the workload (see `run_init`).
            if let Some(fd) = userns_fd
                && libc::dup2(fd, USERNS_FD) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // Own session: a terminal's ^C to ferryd never reaches containers.
            libc::setsid();
            if let Some(fd) = join_fd
                && libc::setns(fd, libc::CLONE_NEWNET) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // The mount namespace is the workload's own (see `exec_workload`):
            // the monitor keeps the host's view, to write the log and the
            // exit record.
            unshare(
                CloneFlags::CLONE_NEWUTS
                    | CloneFlags::CLONE_NEWIPC
                    | CloneFlags::CLONE_NEWPID
                    | new_net,
            )
            .map_err(io::Error::from)
        });
    }
    let child = cmd.spawn().map_err(ContainerError::Spawn)?;
    drop(theirs);
    // The monitor is reaped by ferryd's exit watcher (waitpid on its PID),
    // not through `Child`, so that an adopted monitor is handled the same way.
    Ok(Monitor {
        pid: child.id(),
        control: ours,
    })
}

/// Puts `fd` on CONTROL_FD, inherited across exec. Runs between fork and
/// exec: async-signal-safe calls only.
fn onto_control_fd(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl and dup2 on fds this process owns.
    unsafe {
        if fd == CONTROL_FD {
            // dup2 onto itself keeps FD_CLOEXEC: clear it by hand.
            if libc::fcntl(CONTROL_FD, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
        } else if libc::dup2(fd, CONTROL_FD) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Monitor {
    /// Sends the spec and waits for the workload to be exec'd. Returns the
    /// workload's PID in ferryd's PID namespace.
    pub fn start(mut self, spec: &InitSpec) -> Result<u32, ContainerError> {
        let handshake = |e: io::Error| ContainerError::Handshake(e.to_string());
        self.control
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(handshake)?;
        let mut line =
            serde_json::to_string(spec).map_err(|e| ContainerError::Handshake(e.to_string()))?;
        line.push('\n');
        self.control.write_all(line.as_bytes()).map_err(handshake)?;
        let mut reply = String::new();
        BufReader::new(&self.control)
            .read_line(&mut reply)
            .map_err(handshake)?;
        let reply = reply.trim_end();
        if let Some(pid) = reply.strip_prefix("ok ") {
            pid.parse()
                .map_err(|_| ContainerError::Handshake(format!("bad reply {reply:?}")))
        } else if let Some(reason) = reply.strip_prefix("err ") {
            Err(ContainerError::Exec {
                cmd: spec.cmd.join(" "),
                reason: reason.to_owned(),
            })
        } else {
            Err(ContainerError::Handshake(format!(
                "init stage exited early{}",
                if reply.is_empty() {
                    String::new()
                } else {
                    format!(": {reply}")
                }
            )))
        }
    }
}

/// Entry point of the init stage. Never returns.
pub fn init_main() -> ! {
    let code = match run_init() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ferry init: {err}");
            127
        }
    };
    std::process::exit(code)
}

/// The workload's ends of its standard streams, made before the fork.
enum WorkloadStdio {
    /// Open a terminal once inside the container and send its master back
    /// over this socket (the monitor: its mount namespace is the host's).
    OpenTty {
        console: UnixStream,
        size: Option<(u16, u16)>,
    },
    /// This terminal's slave (the exec helper opened it inside).
    Tty(OwnedFd),
    /// Pipes; no stdin: /dev/null.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
}

impl WorkloadStdio {
    /// Makes these the calling process's stdin, stdout and stderr.
    fn install(self) -> Result<(), String> {
        match self {
            Self::OpenTty { console, size } => {
                let (master, slave) = attach::open_pty(size)?;
                attach::send_fd(&console, &master)?;
                drop((master, console));
                attach::take_terminal(&slave)
            }
            Self::Tty(slave) => attach::take_terminal(&slave),
            Self::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                match stdin {
                    Some(stdin) => dup2_stdin(&stdin),
                    None => {
                        let null = File::open("/dev/null")
                            .map_err(|e| format!("opening /dev/null: {e}"))?;
                        dup2_stdin(&null)
                    }
                }
                .map_err(|e| format!("stdin: {e}"))?;
                dup2_stdout(&stdout).map_err(|e| format!("stdout: {e}"))?;
                dup2_stderr(&stderr).map_err(|e| format!("stderr: {e}"))?;
                Ok(())
            }
        }
    }
}

/// Pipes for a workload without a terminal: its ends and the relay's.
fn pipes(stdio: &StdioSpec) -> Result<(WorkloadStdio, Streams), String> {
    let pipe = || pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (stdin_read, stdin_write) = match stdio.open_stdin {
        true => pipe().map(|(r, w)| (Some(r), Some(w)))?,
        false => (None, None),
    };
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    Ok((
        WorkloadStdio::Pipes {
            stdin: stdin_read,
            stdout: out_write,
            stderr: err_write,
        },
        Streams::Pipes {
            stdin: stdin_write,
            stdout: out_read,
            stderr: err_read,
        },
    ))
}

/// The monitor's end of the workload's streams, before the fork.
enum MonitorStdio {
    /// The terminal's master arrives here once the workload has opened it.
    Console(UnixStream),
    Streams(Streams),
}

fn run_init() -> Result<i32, String> {
    // SAFETY: ferryd put the control socket on CONTROL_FD (see
    // `spawn_monitor`); nothing else in this process owns that fd.
    let mut control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    // The workload must not inherit the control socket.
    // SAFETY: fcntl on an fd this process owns.
    if unsafe { libc::fcntl(CONTROL_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(format!("fcntl: {}", io::Error::last_os_error()));
    }
    let mut line = String::new();
    BufReader::new(&control)
        .read_line(&mut line)
        .map_err(|e| format!("reading spec: {e}"))?;
    if line.is_empty() {
        // ferryd gave up on this container (network setup failed).
        return Ok(1);
    }
    let spec: InitSpec = serde_json::from_str(&line).map_err(|e| format!("bad spec: {e}"))?;
    let prepared = (|| {
        sethostname(&spec.hostname).map_err(|e| format!("sethostname: {e}"))?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(|e| format!("opening the log {}: {e}", spec.log.display()))?;
        let listener = spec
            .attach_socket
            .as_deref()
            .map(attach::listen)
            .transpose()?;
        let (workload, ours) = if spec.stdio.tty {
            let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
            let workload = WorkloadStdio::OpenTty {
                console: theirs,
                size: spec.stdio.console_size,
            };
            (workload, MonitorStdio::Console(ours))
        } else {
            let (workload, ours) = pipes(&spec.stdio)?;
            (workload, MonitorStdio::Streams(ours))
        };
        let status = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let userns = spec.userns.map(|_| {
            // SAFETY: ferryd put the user namespace on USERNS_FD (see
            // `spawn_monitor`); nothing else here owns that fd.
            unsafe { OwnedFd::from_raw_fd(USERNS_FD) }
        });
        if let Some(fd) = &userns {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| format!("fcntl: {e}"))?;
        }
        Ok::<_, String>((log, listener, workload, ours, status, userns))
    })();
    let (log, listener, workload, ours, (status_read, status_write), userns) = match prepared {
        Ok(p) => p,
        Err(reason) => {
            let _ = control.write_all(format!("err {reason}\n").as_bytes());
            return Err(reason);
        }
    };

    // SAFETY: the init stage is single-threaded (a fresh exec of ferryd that
    // has started no runtime), so the child may run arbitrary code.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((ours, status_read, control, listener));
            let reason = exec_workload(&spec, workload, userns);
            let _ = File::from(status_write).write_all(reason.as_bytes());
            // SAFETY: _exit skips atexit handlers and buffers shared with the
            // parent; it is the correct way out of a forked child.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop((workload, status_write, userns));
            // The master comes before the exec; nothing if the workload
            // failed first (its reason follows on the status pipe).
            let streams = match ours {
                MonitorStdio::Streams(streams) => Some(streams),
                MonitorStdio::Console(console) => attach::recv_fd(&console)
                    .map_err(|e| format!("receiving the terminal: {e}"))?
                    .map(Streams::Tty),
            };
            let mut reason = String::new();
            let _ = File::from(status_read).read_to_string(&mut reason);
            let reply = if reason.is_empty() {
                format!("ok {child}\n")
            } else {
                format!("err {reason}\n")
            };
            let _ = control.write_all(reply.as_bytes());
            drop(control);
            if let Some(streams) = streams
                && let Err(e) = relay(&spec, streams, listener, log)
            {
                eprintln!("ferry init: log: {e}");
            }
            if let Some(path) = &spec.attach_socket {
                let _ = std::fs::remove_file(path);
            }
            let record = ExitRecord {
                exit_code: wait_exit_code(child),
                finished_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            record
                .write(&spec.exit_file)
                .map_err(|e| format!("writing {}: {e}", spec.exit_file.display()))?;
            Ok(0)
        }
    }
}

/// Copies the workload's output into the log and to attached peers until
/// it ends (when the PID namespace ends, at the latest).
fn relay(
    spec: &InitSpec,
    streams: Streams,
    listener: Option<std::os::unix::net::UnixListener>,
    log: File,
) -> io::Result<()> {
    let mut relay = Relay::new(streams, spec.stdio.interactive())?;
    if let Some(listener) = listener {
        relay.listen(listener);
    }
    relay.run(Some(&mut logs::Writer::new(log)))
}

/// Runs in the forked child (PID 1 of the container): only returns on error,
/// with the reason.
fn exec_workload(spec: &InitSpec, stdio: WorkloadStdio, userns: Option<OwnedFd>) -> String {
    // SAFETY: prctl with PR_SET_PDEATHSIG only changes this process's state.
    // If the monitor dies, the workload must not outlive it unobserved.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let userns = userns.as_ref().map(AsFd::as_fd);
    match prepare_workload(spec, stdio, userns)
        .and_then(|()| userns.map_or(Ok(()), userns::enter))
        .and_then(|()| spec.privileges.apply(&spec.env))
    {
        Ok(env) => exec_command(&spec.cmd, &env, &spec.hostname).reason,
        Err(reason) => reason,
    }
}

/// Why a command could not be exec'd, with the exit code a shell (and
/// Docker) gives that: 127 not found, 126 found but not runnable.
struct ExecFailure {
    code: i32,
    reason: String,
}

impl From<String> for ExecFailure {
    fn from(reason: String) -> Self {
        Self { code: 126, reason }
    }
}

/// execs `cmd` with the container's environment; only returns on error.
fn exec_command(cmd: &[String], env: &[String], hostname: &str) -> ExecFailure {
    let Some(name) = cmd.first() else {
        return "empty command".to_owned().into();
    };
    let to_c = |s: &str| CString::new(s).map_err(|_| format!("NUL byte in {s:?}"));
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    env.push(format!("HOSTNAME={hostname}"));
    let args: Result<Vec<CString>, String> = cmd.iter().map(|s| to_c(s)).collect();
    let env: Result<Vec<CString>, String> = env.iter().map(|s| to_c(s)).collect();
    let (args, env, program) = match (args, env, to_c(name)) {
        (Ok(a), Ok(e), Ok(p)) => (a, e, p),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.into(),
    };
    // execvpe searches PATH of the *caller's* environment: use the
    // container's.
    if let Some(path) = env
        .iter()
        .find_map(|e| e.to_str().ok()?.strip_prefix("PATH=").map(str::to_owned))
    {
        // SAFETY: single-threaded child between fork and exec.
        unsafe { std::env::set_var("PATH", path) };
    }
    match execvpe(&program, &args, &env) {
        Err(nix::Error::ENOENT) => ExecFailure {
            code: 127,
            reason: format!("{name}: executable file not found in $PATH"),
        },
        Err(e) => format!("{name}: {e}").into(),
    }
}

/// The hidden first argument that turns `ferryd` into an exec helper.
pub const EXEC_ARG: &str = "__exec";

/// A command to run in a running container (`ferry exec`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The container's PID 1, whose namespaces are entered.
    pub pid: u32,
    pub cgroup_procs: Vec<PathBuf>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: PathBuf,
    pub hostname: String,
    /// The container's.
    #[serde(flatten)]
    pub privileges: Privileges,
    #[serde(default)]
    pub stdio: StdioSpec,
    /// The container has a user namespace of its own (joined last).
    #[serde(default)]
    pub userns: bool,
}

/// Entry point of the exec helper (`ferryd __exec`, the spec as JSON on
/// stdin: no argument-length limit; the peer's socket on fd 3): joins the
/// container's cgroups and namespaces, forks the command into its PID
/// namespace with the workload's privileges, relays its streams to the
/// peer (see `attach`) and ends them with an exit frame: its status, 126 if
/// it could not be started, 127 if it was not found, as Docker.
pub fn exec_main() -> ! {
    // SAFETY: ferryd put the peer's socket on CONTROL_FD (see
    // `spawn_exec`); nothing else in this process owns that fd.
    let mut peer = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let mut spec = String::new();
    let code = match io::stdin()
        .read_to_string(&mut spec)
        .map_err(|e| format!("reading the exec spec: {e}"))
        .and_then(|_| {
            serde_json::from_str::<ExecSpec>(&spec).map_err(|e| format!("bad exec spec: {e}"))
        })
        .and_then(|spec| run_exec(&spec, &peer))
    {
        Ok(code) => code,
        Err(err) => {
            let _ = peer.write_all(&logs::frame(
                Stream::Stderr,
                format!("ferry exec: {err}\n").as_bytes(),
            ));
            126
        }
    };
    let _ = peer.write_all(&logs::exit_frame(code));
    std::process::exit(code)
}

/// Starts the exec helper for `spec` (see `exec_main`). Returns it (killed
/// when dropped: a command lives as long as its client) and the socket
/// that carries the command's streams.
pub async fn spawn_exec(
    spec: &ExecSpec,
) -> Result<(tokio::process::Child, tokio::net::UnixStream), String> {
    use tokio::io::AsyncWriteExt as _;
    let spec = serde_json::to_string(spec).map_err(|e| e.to_string())?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg(EXEC_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: the closure only makes async-signal-safe calls (fcntl, dup2).
    unsafe { cmd.pre_exec(move || onto_control_fd(theirs_fd)) };
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the exec helper: {e}"))?;
    drop(theirs);
    // The spec goes through a pipe, not argv: one argument is limited to
    // 128 KiB, a request body to 1 MiB.
    let mut stdin = child
        .stdin
        .take()
        .ok_or("the exec helper has no input pipe")?;
    stdin
        .write_all(spec.as_bytes())
        .await
        .map_err(|e| format!("passing the exec spec: {e}"))?;
    drop(stdin);
    ours.set_nonblocking(true)
        .map_err(|e| format!("exec socket: {e}"))?;
    let ours = tokio::net::UnixStream::from_std(ours).map_err(|e| format!("exec socket: {e}"))?;
    Ok((child, ours))
}

fn run_exec(spec: &ExecSpec, peer: &UnixStream) -> Result<i32, String> {
    // SAFETY: fcntl on an fd this process owns: the command must not
    // inherit the peer's socket.
    if unsafe { libc::fcntl(CONTROL_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(format!("fcntl: {}", io::Error::last_os_error()));
    }
    // Open every namespace before entering any: /proc changes with the
    // mount namespace.
    let namespaces = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
        // Last: once in it, the host's namespaces are out of reach.
        ("user", CloneFlags::CLONE_NEWUSER),
    ]
    .into_iter()
    .filter(|(name, _)| *name != "user" || spec.userns)
    .map(|(name, flag)| {
        let path = format!("/proc/{}/ns/{name}", spec.pid);
        File::open(&path)
            .map(|f| (f, flag))
            .map_err(|e| format!("{path}: {e}"))
    })
    .collect::<Result<Vec<_>, _>>()?;
    for procs in &spec.cgroup_procs {
        std::fs::write(procs, "0")
            .map_err(|e| format!("joining cgroup {}: {e}", procs.display()))?;
    }
    for (ns, flag) in &namespaces {
        nix::sched::setns(ns, *flag).map_err(|e| format!("entering {flag:?}: {e}"))?;
    }
    drop(namespaces);
    // In the container's mount namespace now: a terminal is opened on its
    // devpts.
    let (workload, streams) = if spec.stdio.tty {
        let (master, slave) = attach::open_pty(spec.stdio.console_size)?;
        (WorkloadStdio::Tty(slave), Streams::Tty(master))
    } else {
        pipes(&spec.stdio)?
    };
    // SAFETY: the helper is single-threaded (a fresh exec of ferryd that
    // has started no runtime), so the child may run arbitrary code.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(streams);
            // SAFETY: prctl(PR_SET_PDEATHSIG) only changes this process's state.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            let failure = match workload
                .install()
                .and_then(|()| {
                    std::env::set_current_dir(&spec.workdir)
                        .map_err(|e| format!("chdir {}: {e}", spec.workdir.display()))
                })
                .and_then(|()| spec.privileges.apply(&spec.env))
            {
                Ok(env) => exec_command(&spec.cmd, &env, &spec.hostname),
                Err(reason) => reason.into(),
            };
            eprintln!("ferry exec: {}", failure.reason);
            // SAFETY: _exit is the correct way out of a forked child.
            unsafe { libc::_exit(failure.code) }
        }
        ForkResult::Parent { child } => {
            drop(workload);
            let peer = peer
                .try_clone()
                .map_err(|e| format!("the peer's socket: {e}"))?;
            let mut relay = Relay::new(streams, false).map_err(|e| format!("relay: {e}"))?;
            relay.add_peer(peer);
            let relayed = relay.run(None);
            let code = wait_exit_code(child);
            relayed.map_err(|e| format!("relaying the output: {e}"))?;
            Ok(code)
        }
    }
}

/// cgroups, mount namespace and root, standard streams.
fn prepare_workload(
    spec: &InitSpec,
    stdio: WorkloadStdio,
    userns: Option<BorrowedFd>,
) -> Result<(), String> {
    for procs in &spec.cgroup_procs {
        std::fs::write(procs, "0")
            .map_err(|e| format!("joining cgroup {}: {e}", procs.display()))?;
    }
    // Through the host's /proc, before the container's root hides it:
    // /proc/sys/net is the writer's network namespace's.
    for (key, value) in &spec.sysctls {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("setting {key}: {e}"))?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("new mount namespace: {e}"))?;
    // Nothing mounted in here may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))?;
    rootfs::enter(&spec.rootfs, userns)?;
    // After the root: a terminal is opened on the container's own devpts.
    stdio.install()
}

/// Waits for the workload; exit code as a shell reports it (128+signal).
fn wait_exit_code(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Err(nix::Error::EINTR) | Ok(_) => continue,
            Err(_) => return 255,
        }
    }
}

/// Opens a pidfd for `pid` (works for processes that are not our children).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
