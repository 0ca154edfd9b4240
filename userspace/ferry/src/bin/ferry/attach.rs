//! `-i`, `-t` and `ferry attach`: the local terminal in raw mode, stdin
//! sent as frames, window sizes as they change, and Docker's detach keys
//! (ctrl-p ctrl-q) that leave the container running.

use std::{
    io::{IsTerminal as _, Read as _},
    os::fd::AsRawFd as _,
};

use anyhow::Context as _;
use ferry::{attach, logs};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::mpsc,
};

/// Docker's default detach keys: ctrl-p, ctrl-q.
const DETACH: [u8; 2] = [0x10, 0x11];

/// What the session asks of the local terminal.
#[derive(Clone, Copy)]
pub struct Mode {
    /// The container has a terminal (`-t`).
    pub tty: bool,
    /// Our stdin goes to the container (`-i`).
    pub stdin: bool,
}

/// How a session ended.
pub enum Ended {
    /// The stream ended; an exec's carries its exit code.
    Closed(Option<i32>),
    /// The user typed the detach keys: the container keeps running.
    Detached,
}

impl Mode {
    /// Refuses what cannot work before anything is created: a terminal
    /// fed from a stdin that is not one (as Docker).
    pub fn check(self) -> anyhow::Result<()> {
        if self.tty && self.stdin && !std::io::stdin().is_terminal() {
            anyhow::bail!("the input device is not a TTY (drop -t, or run from a terminal)");
        }
        Ok(())
    }

    /// The local terminal's size (rows, columns), for the container's.
    pub fn size(self) -> Option<[u16; 2]> {
        if !self.tty {
            return None;
        }
        terminal_size()
    }
}

fn terminal_size() -> Option<[u16; 2]> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    [std::io::stdin().as_raw_fd(), std::io::stdout().as_raw_fd()]
        .into_iter()
        .find(|&fd| {
            // SAFETY: TIOCGWINSZ writes one winsize struct.
            unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) == 0 }
        })
        .filter(|_| size.ws_row > 0 && size.ws_col > 0)
        .map(|_| [size.ws_row, size.ws_col])
}

/// The local terminal in raw mode while it lives: every key goes to the
/// container's terminal, which does the echoing and the line editing.
struct RawMode(Termios);

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .context("switching the terminal to raw mode")?;
        Ok(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
    }
}

/// Runs a session over `conn` (a taken-over API connection) until the
/// stream ends or the user detaches.
pub async fn session<C>(conn: C, mode: Mode) -> anyhow::Result<Ended>
where
    C: AsyncRead + AsyncWrite + Send + 'static,
{
    let raw = if mode.tty && mode.stdin {
        Some(RawMode::enter()?)
    } else {
        None
    };
    let (reader, mut writer) = tokio::io::split(conn);
    if let Some([rows, cols]) = mode.size() {
        writer.write_all(&attach::resize_frame(rows, cols)).await?;
    }
    let ended = tokio::select! {
        exit = print_output(reader) => Ended::Closed(exit?),
        input = send_input(writer, mode) => {
            input?;
            Ended::Detached
        }
    };
    drop(raw);
    Ok(ended)
}

/// Writes output frames to stdout and stderr until the stream ends;
/// returns the exit code if one came.
async fn print_output(mut reader: impl AsyncRead + Unpin) -> anyhow::Result<Option<i32>> {
    let mut out = Frames::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await.context("reading from ferryd")?;
        if n == 0 {
            return Ok(out.exit);
        }
        out.print(&buf[..n]).await?;
    }
}

/// The multiplexed stream, printed as it arrives: stdout frames to stdout,
/// stderr's to stderr, and the exit frame kept.
#[derive(Default)]
pub struct Frames {
    pending: Vec<u8>,
    /// The exit code, once its frame came (exec).
    pub exit: Option<i32>,
}

impl Frames {
    /// Prints the complete frames `data` ends (the rest waits for more).
    pub async fn print(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.pending.extend_from_slice(data);
        while let Some((stream, payload)) = logs::take_frame(&mut self.pending) {
            match stream {
                logs::EXIT_STREAM => {
                    self.exit = Some(
                        String::from_utf8_lossy(&payload)
                            .parse()
                            .context("bad exit status from ferryd")?,
                    );
                }
                s if s == logs::Stream::Stderr as u8 => {
                    let mut stderr = tokio::io::stderr();
                    stderr.write_all(&payload).await?;
                    stderr.flush().await?;
                }
                _ => {
                    let mut stdout = tokio::io::stdout();
                    stdout.write_all(&payload).await?;
                    stdout.flush().await?;
                }
            }
        }
        Ok(())
    }
}

/// Sends stdin (if asked) and window sizes; returns only when the user
/// detaches (or on an error). At the end of stdin it sends the end frame
/// and goes on with window sizes.
async fn send_input(mut writer: impl AsyncWrite + Unpin, mode: Mode) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut winch = signal(SignalKind::window_change())?;
    let mut input = mode.stdin.then(read_stdin);
    let mut detach = DetachKeys::default();
    loop {
        tokio::select! {
            chunk = async { input.as_mut()?.recv().await }, if input.is_some() => match chunk {
                Some(data) => {
                    let (data, detached) = if mode.tty {
                        detach.filter(&data)
                    } else {
                        (data, false)
                    };
                    if !data.is_empty() {
                        writer.write_all(&attach::stdin_frame(&data)).await?;
                    }
                    if detached {
                        return Ok(());
                    }
                }
                None => {
                    writer.write_all(&attach::close_frame()).await?;
                    input = None;
                }
            },
            _ = winch.recv(), if mode.tty => {
                if let Some([rows, cols]) = terminal_size() {
                    writer.write_all(&attach::resize_frame(rows, cols)).await?;
                }
            }
            // Nothing left to send: the output decides when it ends.
            else => std::future::pending::<()>().await,
        }
    }
}

/// Reads stdin on a thread of its own (a blocking read that nothing
/// waits for when the session ends); the channel closes at its end.
fn read_stdin() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Finds the detach keys in typed input; a ctrl-p not followed by ctrl-q
/// is passed on with the key after it.
#[derive(Default)]
struct DetachKeys {
    /// A ctrl-p was the last key.
    held: bool,
}

impl DetachKeys {
    /// The bytes to send, and whether the keys were typed (what came
    /// before them is sent, what came after is dropped).
    fn filter(&mut self, data: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(data.len());
        for &b in data {
            if self.held {
                self.held = false;
                if b == DETACH[1] {
                    return (out, true);
                }
                out.push(DETACH[0]);
            }
            if b == DETACH[0] {
                self.held = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_end_the_session_and_keep_what_came_before() {
        let mut keys = DetachKeys::default();
        assert_eq!(keys.filter(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(keys.filter(b"ab\x10\x11cd"), (b"ab".to_vec(), true));
    }

    #[test]
    fn a_lone_ctrl_p_is_passed_on_with_the_next_key_even_across_reads() {
        let mut keys = DetachKeys::default();
        assert_eq!(keys.filter(b"x\x10"), (b"x".to_vec(), false));
        assert_eq!(keys.filter(b"y"), (b"\x10y".to_vec(), false));
        assert_eq!(keys.filter(b"\x10\x10\x11"), (b"\x10".to_vec(), true));
    }
}
