//! Container processes: the init stage and the handshake with ferryd.
//!
//! ferryd re-executes itself as the init stage (`ferryd __init`) in new
//! mount, UTS, IPC, network and PID namespaces, with a control socket on fd 3.
//! The init stage waits there while ferryd wires the network namespace, then
//! receives the spec, sets the hostname, forks the workload (PID 1 of the new
//! PID namespace, with a fresh /proc), reports its PID or the exec error, and
//! stays as the container's monitor: it waits for the workload and exits with
//! its status, so ferryd learns the exit code by waiting for the monitor.

use std::{
    ffi::CString,
    fs::File,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{net::UnixStream, process::CommandExt as _},
    },
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
    sys::wait::{WaitStatus, waitpid},
    unistd::{ForkResult, Pid, execvpe, fork, pipe2, sethostname},
};
use serde::{Deserialize, Serialize};

/// The hidden first argument that turns `ferryd` into the init stage.
pub const INIT_ARG: &str = "__init";
/// The control socket's fd in the init stage.
const CONTROL_FD: i32 = 3;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("cannot open log {path}: {source}")]
    Log {
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
}

/// A started init stage, still waiting for its spec.
pub struct Monitor {
    pub pid: u32,
    control: UnixStream,
}

/// Starts the init stage in fresh namespaces; its output goes to `log`.
pub fn spawn_monitor(log: &Path) -> Result<Monitor, ContainerError> {
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| ContainerError::Log {
            path: log.display().to_string(),
            source,
        })?;
    let log_err = log_file.try_clone().map_err(ContainerError::Spawn)?;
    let (ours, theirs) = UnixStream::pair().map_err(ContainerError::Spawn)?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(INIT_ARG)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (dup2, fcntl, setsid, unshare).
    unsafe {
        cmd.pre_exec(move || {
            if theirs_fd == CONTROL_FD {
                // dup2 onto itself keeps FD_CLOEXEC: clear it by hand.
                if libc::fcntl(CONTROL_FD, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_fd, CONTROL_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Own session: a terminal's ^C to ferryd never reaches containers.
            libc::setsid();
            unshare(
                CloneFlags::CLONE_NEWNS
                    | CloneFlags::CLONE_NEWUTS
                    | CloneFlags::CLONE_NEWIPC
                    | CloneFlags::CLONE_NEWNET
                    | CloneFlags::CLONE_NEWPID,
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
    sethostname(&spec.hostname).map_err(|e| format!("sethostname: {e}"))?;
    // Nothing mounted in here may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))?;

    let (err_read, err_write) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the init stage is single-threaded (a fresh exec of ferryd that
    // has started no runtime), so the child may run arbitrary code.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(err_read);
            let reason = exec_workload(&spec);
            let mut pipe = File::from(err_write);
            let _ = pipe.write_all(reason.as_bytes());
            // SAFETY: _exit skips atexit handlers and buffers shared with the
            // parent; it is the correct way out of a forked child.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(err_write);
            let mut reason = String::new();
            let _ = File::from(err_read).read_to_string(&mut reason);
            let reply = if reason.is_empty() {
                format!("ok {child}\n")
            } else {
                format!("err {reason}\n")
            };
            let _ = control.write_all(reply.as_bytes());
            drop(control);
            Ok(wait_exit_code(child))
        }
    }
}

/// Runs in the forked child (PID 1 of the container): only returns on error,
/// with the reason.
fn exec_workload(spec: &InitSpec) -> String {
    // SAFETY: prctl with PR_SET_PDEATHSIG only changes this process's state.
    // If the monitor dies, the workload must not outlive it unobserved.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Err(e) = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        return format!("mounting /proc: {e}");
    }
    if let Err(e) = std::env::set_current_dir("/") {
        return format!("chdir /: {e}");
    }
    let Some(program) = spec.cmd.first() else {
        return "empty command".to_owned();
    };
    let to_c = |s: &str| CString::new(s).map_err(|_| format!("NUL byte in {s:?}"));
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    env.push(format!("HOSTNAME={}", spec.hostname));
    let args: Result<Vec<CString>, String> = spec.cmd.iter().map(|s| to_c(s)).collect();
    let env: Result<Vec<CString>, String> = env.iter().map(|s| to_c(s)).collect();
    let (args, env, program) = match (args, env, to_c(program)) {
        (Ok(a), Ok(e), Ok(p)) => (a, e, p),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
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
        Err(nix::Error::ENOENT) => format!("{}: executable file not found in $PATH", spec.cmd[0]),
        Err(e) => format!("{}: {e}", spec.cmd[0]),
    }
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
