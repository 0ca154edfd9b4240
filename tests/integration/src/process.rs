//! Processes, commands and namespaces the harness runs things in: a
//! command inside a network namespace or cgroup, checked output, temporary
//! namespaces, unique names, background processes ended on drop.

use std::{
    fs::File,
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::Ordering,
    thread::sleep,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

use crate::COUNTER;

/// A command that runs inside the network namespace at `ns_path`
/// (`/run/netns/<name>` or `/proc/<pid>/ns/net`). Uses setns rather than
/// `ip netns exec`, which would remount /sys and hide the bpffs pins.
pub fn in_netns(ns_path: &Path, program: &str, args: &[&str]) -> Command {
    let ns = File::open(ns_path).unwrap_or_else(|e| panic!("open {}: {e}", ns_path.display()));
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: setns is async-signal-safe; `ns` outlives the spawn because
    // the closure owns it.
    unsafe {
        cmd.pre_exec(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    cmd
}

/// Adds to `cmd` a step that moves the child into the cgroup2 directory
/// `cgroup` before exec.
pub fn join_cgroup(cmd: &mut Command, cgroup: &Path) {
    let procs = File::options()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .unwrap_or_else(|e| panic!("open {}/cgroup.procs: {e}", cgroup.display()));
    // SAFETY: write(2) on an fd opened before fork is async-signal-safe;
    // "0" means the writing process itself.
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd as _;
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The cgroup2 mount (hybrid hosts have it at /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> PathBuf {
    let unified = PathBuf::from("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        unified
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// Runs a command to completion, returning its output.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn check(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tarball of a busybox root for engines to import (no registry):
/// busybox-static, a page at /www/index.html ("hello from busybox") and a
/// CGI script at /www/cgi-bin/peer that answers with the caller's address.
/// Written below `dir`; its path.
pub fn busybox_tar(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let root = dir.join("busybox-image");
    for d in ["bin", "www/cgi-bin", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("image dirs");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    for applet in [
        "sh", "httpd", "sleep", "ping", "wget", "cat", "echo", "ip", "nc", "true",
    ] {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).expect("applet link");
        }
    }
    std::fs::write(root.join("www/index.html"), "hello from busybox\n").expect("page");
    let cgi = root.join("www/cgi-bin/peer");
    std::fs::write(
        &cgi,
        "#!/bin/sh\necho Content-Type: text/plain\necho\necho peer $REMOTE_ADDR\n",
    )
    .expect("cgi");
    std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let tar = dir.join("busybox-image.tar");
    check(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    tar
}

/// A named network namespace that is deleted on drop (with whatever
/// interfaces it still holds).
pub struct TempNetns {
    pub name: String,
}

impl TempNetns {
    pub fn new(name: &str) -> Self {
        check(Command::new("ip").args(["netns", "add", name]));
        check(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        Self {
            name: name.to_owned(),
        }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <name> <args>`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        check(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command inside this namespace.
    pub fn cmd(&self, program: &str, args: &[&str]) -> Command {
        in_netns(&self.path(), program, args)
    }
}

impl Drop for TempNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A unique name prefix for this process: `<tag><pid>x<n>`.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{tag}{}x{n}", std::process::id())
}

/// A background process a test or benchmark started, leader of a process
/// group of its own. Dropping it ends the whole group (a forking server's
/// per-connection children, nginx's workers): SIGTERM, then SIGKILL after a
/// grace period. Only the group this handle created is signalled.
pub struct Background {
    child: Child,
    grace: Duration,
}

impl Background {
    /// Spawns `cmd` in a new process group.
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self {
            child,
            grace: Duration::from_millis(500),
        }
    }

    /// Gives the group this long to exit on SIGTERM (default 0.5 s).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's handle (e.g. its stdin).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            sleep(Duration::from_millis(10));
        }
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
