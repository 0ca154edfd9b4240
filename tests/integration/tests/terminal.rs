//! `-i`, `-t` and `ferry attach`, driven as a user at a terminal drives
//! them: the `ferry` CLI runs on a pseudo-terminal this test owns (its
//! controlling terminal, so resizing it sends SIGWINCH), and the test
//! types into the master and reads what the screen would show.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt as _,
    },
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ferry_integration::{
    World, bin_dir,
    image::{self, Layer},
    wait_until,
};
use serde_json::json;

const APPLETS: &[&str] = &["sh", "cat", "echo", "stty", "tty", "sleep", "true"];

/// Loads a busybox image as `tty:1`.
fn load_image(world: &World) {
    let layers = vec![Layer::new().busybox(APPLETS).finish()];
    let config = image::config(&layers, json!({ "Cmd": ["sh"], "Env": ["PATH=/bin"] }));
    let archive = world.dir.join("tty.tar");
    image::docker_archive(&archive, &["tty:1"], &layers, &config);
    world.ferry_ok(&["load", "-i", &archive.display().to_string()]);
}

fn set_size(fd: &impl AsRawFd, rows: u16, cols: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct.
    assert_eq!(
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) },
        0
    );
}

/// `ferry ARGS` on a terminal of its own.
struct Session {
    child: Child,
    master: File,
    slave: OwnedFd,
    screen: Arc<Mutex<String>>,
}

impl Session {
    fn start(world: &World, args: &[&str]) -> Self {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        set_size(&pty.master, 30, 100);
        let slave = pty.slave;
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        let mut cmd = Command::new(bin_dir().join("ferry"));
        cmd.arg("-H")
            .arg(&world.socket)
            .args(args)
            .stdin(io(&slave))
            .stdout(io(&slave))
            .stderr(io(&slave));
        // SAFETY: setsid and ioctl(TIOCSCTTY) between fork and exec are
        // async-signal-safe; stdin is the terminal by then.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn ferry");
        let master = File::from(pty.master);
        let screen = Arc::new(Mutex::new(String::new()));
        let mut reader = master.try_clone().expect("dup master");
        let shared = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the child and the test have closed the slave.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut screen) = shared.lock() {
                    screen.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let session = Self {
            child,
            master,
            slave,
            screen,
        };
        // Typed before ferry has switched our terminal to raw mode, keys
        // would meet our own line discipline (which echoes them, and eats
        // ctrl-q as flow control): wait until the session is up.
        assert!(
            wait_until(Duration::from_secs(15), || !session.restored()),
            "ferry never put the terminal in raw mode; the screen:\n{}",
            session.screen()
        );
        session
    }

    fn screen(&self) -> String {
        self.screen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn type_keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).expect("type");
    }

    /// Waits for `text` to be on the screen.
    fn expect(&self, text: &str) {
        assert!(
            wait_until(Duration::from_secs(15), || self.screen().contains(text)),
            "{text:?} never appeared; the screen:\n{}",
            self.screen()
        );
    }

    /// Waits for ferry to exit; its exit code.
    fn exit_code(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ferry did not exit; the screen:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the local terminal is back in its own (canonical) mode.
    fn restored(&self) -> bool {
        nix::sys::termios::tcgetattr(&self.slave)
            .map(|t| {
                t.local_flags
                    .contains(nix::sys::termios::LocalFlags::ICANON)
            })
            .unwrap_or(false)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn run_it_gives_a_shell_a_terminal_that_follows_resizes_and_passes_its_exit_code() {
    let world = World::new();
    load_image(&world);
    let mut s = Session::start(&world, &["run", "-it", "--rm", "--name", "shell", "tty:1"]);
    // The prompt was written before the client attached: kept for it.
    s.expect("# ");
    s.type_keys("tty; stty size\r");
    s.expect("/dev/pts/0");
    s.expect("30 100");
    // Resizing our terminal reaches the container's.
    set_size(&s.master, 40, 120);
    s.type_keys("stty size\r");
    s.expect("40 120");
    // ^C goes to the container's shell (raw mode here), not to ferry.
    s.type_keys("echo sleeping; sleep 30\r");
    s.expect("sleeping\r\n");
    // The shell forks sleep right after: give it the foreground.
    std::thread::sleep(Duration::from_millis(500));
    s.type_keys("\x03echo after-interrupt\r");
    s.expect("after-interrupt\r\n");
    s.type_keys("exit 3\r");
    assert_eq!(s.exit_code(), 3, "the screen:\n{}", s.screen());
    assert!(s.restored(), "the terminal was left in raw mode");
    let left = world.ferry_ok(&["ps", "-a", "-q"]);
    assert!(left.trim().is_empty(), "--rm left {left}");
}

#[test]
fn exec_it_attach_and_the_detach_keys() {
    let world = World::new();
    load_image(&world);
    world.ferry_ok(&["run", "-dit", "--name", "box", "tty:1"]);

    let mut exec = Session::start(&world, &["exec", "-it", "box", "sh"]);
    exec.type_keys("echo $((6 * 7)); tty\r");
    exec.expect("42\r\n/dev/pts/");
    exec.type_keys("exit 4\r");
    assert_eq!(exec.exit_code(), 4, "the screen:\n{}", exec.screen());
    assert!(exec.restored(), "exec left the terminal in raw mode");

    // attach, detach with ctrl-p ctrl-q: the container keeps running.
    let mut first = Session::start(&world, &["attach", "box"]);
    first.type_keys("echo hello-from-attach\r");
    first.expect("hello-from-attach\r\n");
    first.type_keys("\x10\x11");
    assert_eq!(first.exit_code(), 0, "the screen:\n{}", first.screen());
    assert!(first.restored(), "detach left the terminal in raw mode");
    assert_eq!(world.inspect("box")["State"]["Status"], "running");

    // A second attach; the shell's exit ends it with the exit code.
    let mut second = Session::start(&world, &["attach", "box"]);
    second.type_keys("echo again\r");
    second.expect("again\r\n");
    second.type_keys("exit 5\r");
    assert_eq!(second.exit_code(), 5, "the screen:\n{}", second.screen());
    assert_eq!(world.inspect("box")["State"]["ExitCode"], 5);
    world.ferry_ok(&["rm", "box"]);
}

#[test]
fn stdin_without_a_terminal_and_a_terminal_without_one() {
    let world = World::new();
    load_image(&world);
    // -i: our stdin is the container's, its end ends `cat`.
    let out = world.ferry_with_input(
        &[
            "run",
            "-i",
            "--rm",
            "tty:1",
            "sh",
            "-c",
            "cat; echo done; exit 6",
        ],
        b"line one\nline two\n",
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line one\nline two\ndone\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(6));

    world.ferry_ok(&["run", "-d", "--name", "idle", "tty:1", "sleep", "300"]);
    let out = world.ferry_with_input(&["exec", "-i", "idle", "cat"], b"through exec\n", &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through exec\n");
    assert!(out.status.success());

    // -it needs a terminal here; nothing is created without one.
    let out = world.ferry_with_input(&["run", "-it", "--name", "never", "tty:1"], b"", &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a TTY"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = world.ferry_ok(&["ps", "-a"]);
    assert!(!names.contains("never"), "{names}");
    world.ferry_ok(&["rm", "-f", "idle"]);
}
