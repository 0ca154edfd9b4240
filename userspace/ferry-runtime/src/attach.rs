//! A workload's standard streams, for those who attach to them: `ferry run
//! -i/-t`, `ferry attach`, `ferry exec -i/-t`.
//!
//! The process that owns a workload's streams (the monitor for a
//! container's PID 1, the exec helper for `ferry exec`) relays them with a
//! [`Relay`]. Output, from a pseudo-terminal's master or from the stdout
//! and stderr pipes, goes to the container's log (monitor only) and, as
//! frames of the multiplexed stream (see `logs`), to every attached peer.
//! Peers send frames the other way, with the same 8-byte header: stdin
//! data, a window size, the end of stdin. A terminal's output is all
//! stdout, as in Docker.
//!
//! The pseudo-terminal is opened inside the container (its own devpts, see
//! `rootfs`), so `tty` there names a device the container can see.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, IoSlice, IoSliceMut, Read as _, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::net::{UnixListener, UnixStream},
    },
    time::Duration,
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    poll::{PollFd, PollFlags, PollTimeout, poll},
    pty::{Winsize, openpty},
    sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg},
};
use serde::{Deserialize, Serialize};

use crate::logs::{self, Stream};

/// Input frame: bytes for the workload's stdin.
pub const INPUT_STDIN: u8 = 0;
/// Input frame: the terminal's size, rows and columns (big-endian u16 each).
pub const INPUT_RESIZE: u8 = 4;
/// Input frame: the peer's stdin has ended.
pub const INPUT_CLOSE: u8 = 5;

/// Output kept for the first peer to attach (a shell's first prompt is
/// written before anyone can be attached).
const BACKLOG_LIMIT: usize = 64 * 1024;
/// A peer that takes longer than this to accept output is dropped, so that
/// a stalled client never stalls the workload.
const PEER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a workload's standard streams are wired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioSpec {
    /// A pseudo-terminal for stdin, stdout and stderr (`-t`).
    #[serde(default)]
    pub tty: bool,
    /// Stdin stays open for peers (`-i`); otherwise it is /dev/null.
    #[serde(default)]
    pub open_stdin: bool,
    /// The terminal's initial size (rows, columns).
    #[serde(default)]
    pub console_size: Option<(u16, u16)>,
}

impl StdioSpec {
    /// Whether anyone is expected to attach (output is then kept for the
    /// first peer).
    pub fn interactive(&self) -> bool {
        self.tty || self.open_stdin
    }
}

/// A frame for the workload's stdin.
pub fn stdin_frame(data: &[u8]) -> Vec<u8> {
    logs::raw_frame(INPUT_STDIN, data)
}

/// A frame with the terminal's size.
pub fn resize_frame(rows: u16, cols: u16) -> Vec<u8> {
    let mut size = rows.to_be_bytes().to_vec();
    size.extend_from_slice(&cols.to_be_bytes());
    logs::raw_frame(INPUT_RESIZE, &size)
}

/// The frame that ends stdin.
pub fn close_frame() -> Vec<u8> {
    logs::raw_frame(INPUT_CLOSE, &[])
}

/// Opens a pseudo-terminal in the caller's mount namespace, with `size`.
pub fn open_pty(size: Option<(u16, u16)>) -> Result<(OwnedFd, OwnedFd), String> {
    let winsize = size.map(|(rows, cols)| Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = openpty(winsize.as_ref(), None).map_err(|e| format!("opening a terminal: {e}"))?;
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(|e| format!("fcntl: {e}"))?;
    }
    Ok((pty.master, pty.slave))
}

/// Makes `slave` the controlling terminal of a new session and the calling
/// process's stdin, stdout and stderr. Runs in the workload before exec.
pub fn take_terminal(slave: &OwnedFd) -> Result<(), String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    // SAFETY: TIOCSCTTY takes an int argument and changes only this
    // process's session.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(format!(
            "making the terminal controlling: {}",
            io::Error::last_os_error()
        ));
    }
    for (name, target) in [("stdin", 0), ("stdout", 1), ("stderr", 2)] {
        // SAFETY: dup2 onto a standard stream of this process.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(format!("{name}: {}", io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Sends `fd` over `sock` (SCM_RIGHTS).
pub fn send_fd(sock: &UnixStream, fd: &OwnedFd) -> Result<(), String> {
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(b"t")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("passing the terminal: {e}"))
}

/// Receives one fd sent with `send_fd`; `None` if the sender closed first.
pub fn recv_fd(sock: &UnixStream) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::Error::EINTR) => continue,
            other => break other?,
        }
    };
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd for us; nobody else
            // owns it.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok(None)
}

/// Sets the size of the terminal whose master is `fd`.
fn set_size(fd: RawFd, rows: u16, cols: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct; the kernel sends the
    // foreground process group SIGWINCH.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) };
}

/// The relay's side of the workload's streams.
pub enum Streams {
    /// The terminal's master: output and input.
    Tty(OwnedFd),
    /// Pipes: stdout and stderr, and stdin if it is open.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
}

/// A peer: its socket and the part of an input frame read so far.
struct Peer {
    sock: UnixStream,
    partial: Vec<u8>,
}

/// Relays a workload's streams to the log and to attached peers.
pub struct Relay {
    outputs: Vec<(Stream, File)>,
    /// Where stdin frames go (the master, or the stdin pipe); non-blocking.
    input: Option<File>,
    /// Bytes for `input` not yet taken.
    pending: Vec<u8>,
    /// Close `input` once `pending` is written (a pipe's end of stdin).
    close_input: bool,
    /// The master, for window sizes.
    tty: Option<RawFd>,
    listener: Option<UnixListener>,
    peers: Vec<Peer>,
    /// Frames kept until the first peer arrives; `None` once one has.
    backlog: Option<VecDeque<Vec<u8>>>,
    /// Bytes in `backlog`.
    backlog_bytes: usize,
}

impl Relay {
    /// A relay for `streams`. `keep_backlog`: output is kept (up to 64 KiB)
    /// for the first peer.
    pub fn new(streams: Streams, keep_backlog: bool) -> io::Result<Self> {
        let (outputs, input, tty) = match streams {
            Streams::Tty(master) => {
                let raw = master.as_raw_fd();
                let out = File::from(master);
                let input = out.try_clone()?;
                (vec![(Stream::Stdout, out)], Some(input), Some(raw))
            }
            Streams::Pipes {
                stdin,
                stdout,
                stderr,
            } => (
                vec![
                    (Stream::Stdout, File::from(stdout)),
                    (Stream::Stderr, File::from(stderr)),
                ],
                stdin.map(File::from),
                None,
            ),
        };
        if let Some(input) = &input {
            let flags = OFlag::from_bits_truncate(fcntl(input, FcntlArg::F_GETFL)?);
            fcntl(input, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        }
        Ok(Self {
            outputs,
            input,
            pending: Vec::new(),
            close_input: false,
            tty,
            listener: None,
            peers: Vec::new(),
            backlog: keep_backlog.then(VecDeque::new),
            backlog_bytes: 0,
        })
    }

    /// Peers may connect to `listener` while the workload runs.
    pub fn listen(&mut self, listener: UnixListener) {
        self.listener = Some(listener);
    }

    /// Adds a peer that is already connected.
    pub fn add_peer(&mut self, sock: UnixStream) {
        self.attach(sock);
    }

    /// Relays until the workload's output has ended (every writer closed).
    pub fn run(&mut self, mut log: Option<&mut logs::Writer>) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        while !self.outputs.is_empty() {
            let (out_ready, input_ready, accept, peer_ready) = self.wait()?;
            let mut closed = Vec::new();
            let mut frames = Vec::new();
            for (i, (stream, file)) in self.outputs.iter_mut().enumerate() {
                if !out_ready[i] {
                    continue;
                }
                match file.read(&mut buf) {
                    Ok(0) => closed.push(i),
                    Ok(n) => {
                        if let Some(log) = log.as_deref_mut() {
                            log.write(*stream, &buf[..n])?;
                        }
                        frames.push(logs::frame(*stream, &buf[..n]));
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                        ) => {}
                    // A terminal's master reads EIO once every slave is closed.
                    Err(_) => closed.push(i),
                }
            }
            for i in closed.into_iter().rev() {
                self.outputs.remove(i);
            }
            for frame in frames {
                self.broadcast(frame);
            }
            if input_ready {
                self.flush_input();
            }
            if accept && let Some(listener) = &self.listener {
                match listener.accept() {
                    Ok((sock, _)) => self.attach(sock),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            for i in (0..peer_ready.len()).rev() {
                if peer_ready[i] && !self.read_peer(i, &mut buf) {
                    self.peers.remove(i);
                }
            }
        }
        if let Some(log) = log {
            log.finish()?;
        }
        Ok(())
    }

    /// Sends `frame` to every peer (those that cannot take it are dropped).
    pub fn broadcast(&mut self, frame: Vec<u8>) {
        if let Some(backlog) = &mut self.backlog {
            self.backlog_bytes += frame.len();
            backlog.push_back(frame);
            while self.backlog_bytes > BACKLOG_LIMIT && backlog.len() > 1 {
                self.backlog_bytes -= backlog.pop_front().map_or(0, |f| f.len());
            }
            return;
        }
        self.peers.retain_mut(|p| p.sock.write_all(&frame).is_ok());
    }

    fn attach(&mut self, sock: UnixStream) {
        if sock.set_write_timeout(Some(PEER_WRITE_TIMEOUT)).is_err() {
            return;
        }
        let mut peer = Peer {
            sock,
            partial: Vec::new(),
        };
        if let Some(backlog) = self.backlog.take() {
            for frame in backlog {
                if peer.sock.write_all(&frame).is_err() {
                    return;
                }
            }
        }
        self.peers.push(peer);
    }

    /// Polls the outputs, the input (when bytes wait), the listener and
    /// the peers; says which are ready.
    fn wait(&self) -> io::Result<(Vec<bool>, bool, bool, Vec<bool>)> {
        loop {
            let mut fds: Vec<PollFd> = self
                .outputs
                .iter()
                .map(|(_, f)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
                .collect();
            let input_at = match &self.input {
                Some(input) if !self.pending.is_empty() || self.close_input => {
                    fds.push(PollFd::new(input.as_fd(), PollFlags::POLLOUT));
                    Some(fds.len() - 1)
                }
                _ => None,
            };
            let listener_at = self.listener.as_ref().map(|l| {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let peers_at = fds.len();
            fds.extend(
                self.peers
                    .iter()
                    .map(|p| PollFd::new(p.sock.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            return Ok((
                ready[..self.outputs.len()].to_vec(),
                input_at.is_some_and(|i| ready[i]),
                listener_at.is_some_and(|i| ready[i]),
                ready[peers_at..].to_vec(),
            ));
        }
    }

    /// Reads from peer `i` and acts on its complete frames; false once it
    /// has gone.
    fn read_peer(&mut self, i: usize, buf: &mut [u8]) -> bool {
        let peer = &mut self.peers[i];
        match peer.sock.read(buf) {
            Ok(0) => return false,
            Ok(n) => peer.partial.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Err(_) => return false,
        }
        let mut frames = Vec::new();
        while let Some(frame) = logs::take_frame(&mut peer.partial) {
            frames.push(frame);
        }
        for (kind, payload) in frames {
            match kind {
                INPUT_STDIN if self.input.is_some() && !self.close_input => {
                    self.pending.extend_from_slice(&payload);
                }
                INPUT_RESIZE => {
                    if let (Some(fd), [r0, r1, c0, c1]) = (self.tty, payload.as_slice()) {
                        set_size(
                            fd,
                            u16::from_be_bytes([*r0, *r1]),
                            u16::from_be_bytes([*c0, *c1]),
                        );
                    }
                }
                // A terminal's input has no end (a shell reads ^D as
                // typed); a pipe's is closed once drained.
                INPUT_CLOSE if self.tty.is_none() => self.close_input = true,
                _ => {}
            }
        }
        self.flush_input();
        true
    }

    /// Writes what stdin can take now; closes a pipe's stdin when asked and
    /// drained.
    fn flush_input(&mut self) {
        let Some(input) = &mut self.input else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match input.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The workload closed its stdin: what is left has no reader.
                Err(_) => {
                    self.pending.clear();
                    self.input = None;
                    return;
                }
            }
        }
        if self.close_input {
            self.input = None;
        }
    }
}

/// Calls `f` with a path to `path` that fits a socket address (108
/// bytes): through the parent directory's fd in /proc/self/fd, as a
/// container's directory can be deeper than that.
pub fn with_short_path<T>(
    path: &std::path::Path,
    f: impl FnOnce(&std::path::Path) -> io::Result<T>,
) -> io::Result<T> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file's path",
        ));
    };
    let dir = File::open(dir)?;
    let short = std::path::Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    f(&short)
}

/// Binds the socket peers attach to (mode 0600), replacing a stale one.
pub fn listen(path: &std::path::Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let fail = |e: io::Error| format!("attach socket {}: {e}", path.display());
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(fail(e)),
        _ => {}
    }
    let listener = with_short_path(path, |p| UnixListener::bind(p)).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    Ok(listener)
}
