//! Container logs: one JSON object per line, as Docker's json-file driver
//! writes them (`{"log":"...","stream":"stdout","time":"..."}`), and the
//! multiplexed framing Docker's API uses to send them (an 8-byte header:
//! stream, three zero bytes, big-endian payload length).

use std::{
    collections::VecDeque,
    fs::File,
    io,
    io::Write as _,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use futures::{SinkExt as _, channel::mpsc};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _},
    sync::watch,
};

use serde::{Deserialize, Serialize};

/// A partial line longer than this is written out as it is (Docker: 16 KiB).
const MAX_PARTIAL: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One log line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

impl Entry {
    pub fn stream(&self) -> Stream {
        if self.stream == "stderr" {
            Stream::Stderr
        } else {
            Stream::Stdout
        }
    }
}

/// Turns the workload's output into log lines.
pub struct Writer {
    file: File,
    pending: [Vec<u8>; 2],
}

impl Writer {
    pub fn new(file: File) -> Self {
        Self {
            file,
            pending: [Vec::new(), Vec::new()],
        }
    }

    /// Appends `data` read from `stream`; complete lines are written at once.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let slot = stream as usize - 1;
        self.pending[slot].extend_from_slice(data);
        while let Some(end) = self.pending[slot].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending[slot].drain(..=end).collect();
            self.emit(stream, &line)?;
        }
        if self.pending[slot].len() >= MAX_PARTIAL {
            let line = std::mem::take(&mut self.pending[slot]);
            self.emit(stream, &line)?;
        }
        Ok(())
    }

    /// Writes out what is left of unterminated lines.
    pub fn finish(&mut self) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut self.pending[stream as usize - 1]);
            if !line.is_empty() {
                self.emit(stream, &line)?;
            }
        }
        Ok(())
    }

    fn emit(&mut self, stream: Stream, line: &[u8]) -> io::Result<()> {
        let entry = Entry {
            log: String::from_utf8_lossy(line).into_owned(),
            stream: stream.name().to_owned(),
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
        };
        let mut out = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        out.push(b'\n');
        self.file.write_all(&out)
    }
}

/// The frame stream byte of the exit status that ends `ferry exec`'s
/// output (payload: the decimal exit code). Never in a container's log.
pub const EXIT_STREAM: u8 = 3;

/// One frame of the multiplexed stream.
pub fn frame(stream: Stream, payload: &[u8]) -> Vec<u8> {
    raw_frame(stream as u8, payload)
}

/// The frame that carries an exit code.
pub fn exit_frame(code: i32) -> Vec<u8> {
    raw_frame(EXIT_STREAM, code.to_string().as_bytes())
}

pub(crate) fn raw_frame(stream: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.push(stream);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits the first complete frame off `buf`: its stream byte and payload.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let header: [u8; 8] = buf.get(..8)?.try_into().ok()?;
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if buf.len() < 8 + len {
        return None;
    }
    let payload = buf[8..8 + len].to_vec();
    buf.drain(..8 + len);
    Some((header[0], payload))
}

/// What `follow` sends: frames, or the error that ended the stream.
pub type Chunk = Result<Vec<u8>, io::Error>;

/// Sends the log at `path` as frames: the last `tail` lines (all if
/// `None`), then, with `follow`, new lines as they come until `exited`
/// says the container is gone (its output is complete then). `streams`
/// selects stdout and stderr.
pub async fn follow(
    path: PathBuf,
    mut exited: Option<watch::Receiver<Option<i32>>>,
    tail: Option<usize>,
    follow: bool,
    streams: (bool, bool),
    mut tx: mpsc::Sender<Chunk>,
) {
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let mut reader = tokio::io::BufReader::new(file);
    let mut pending = String::new();
    let wanted = |e: &Entry| match e.stream() {
        Stream::Stdout => streams.0,
        Stream::Stderr => streams.1,
    };
    let mut backlog = VecDeque::new();
    for entry in read_complete(&mut reader, &mut pending).await {
        if wanted(&entry) {
            backlog.push_back(entry);
            if tail.is_some_and(|n| backlog.len() > n) {
                backlog.pop_front();
            }
        }
    }
    for entry in backlog {
        if tx
            .send(Ok(frame(entry.stream(), entry.log.as_bytes())))
            .await
            .is_err()
        {
            return;
        }
    }
    if !follow {
        return;
    }
    loop {
        // Checked before reading: whatever was written before the exit is
        // read below, and then the stream ends.
        let done = exited.as_ref().is_none_or(|rx| rx.borrow().is_some());
        for entry in read_complete(&mut reader, &mut pending).await {
            if wanted(&entry)
                && tx
                    .send(Ok(frame(entry.stream(), entry.log.as_bytes())))
                    .await
                    .is_err()
            {
                return;
            }
        }
        if done {
            return;
        }
        let poll = tokio::time::sleep(Duration::from_millis(100));
        match exited.as_mut() {
            Some(rx) => {
                tokio::select! {
                    _ = rx.changed() => {}
                    () = poll => {}
                }
            }
            None => poll.await,
        }
    }
}

/// Sends what `from` produces as frames of `stream` until it closes.
pub async fn copy_frames<R: AsyncRead + Unpin>(
    mut from: R,
    stream: Stream,
    mut tx: mpsc::Sender<Chunk>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(Ok(frame(stream, &buf[..n]))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads the complete lines available now; a partly written last line
/// stays in `pending` for the next call.
async fn read_complete<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    pending: &mut String,
) -> Vec<Entry> {
    let mut out = Vec::new();
    loop {
        match reader.read_line(pending).await {
            Ok(0) | Err(_) => return out,
            Ok(_) if pending.ends_with('\n') => {
                if let Ok(entry) = serde_json::from_str::<Entry>(pending) {
                    out.push(entry);
                }
                pending.clear();
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_partials_kept() {
        let path = std::env::temp_dir().join(format!("ferry-logs-{}", std::process::id()));
        let file = File::create(&path).expect("temp file");
        let mut w = Writer::new(file);
        w.write(Stream::Stdout, b"one\ntw").expect("write");
        w.write(Stream::Stderr, b"err\n").expect("write");
        w.write(Stream::Stdout, b"o\nthree").expect("write");
        w.finish().expect("finish");
        let text = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        let entries: Vec<Entry> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        let got: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.stream.as_str(), e.log.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("stdout", "one\n"),
                ("stderr", "err\n"),
                ("stdout", "two\n"),
                ("stdout", "three")
            ]
        );
        assert!(entries[0].time.ends_with('Z'));
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = frame(Stream::Stderr, b"hello");
        buf.extend(frame(Stream::Stdout, b""));
        buf.extend(exit_frame(-3));
        buf.extend_from_slice(&[1, 0, 0]);
        let (s, p) = take_frame(&mut buf).expect("first frame");
        assert_eq!((s, p.as_slice()), (2, &b"hello"[..]));
        let (s, p) = take_frame(&mut buf).expect("second frame");
        assert_eq!((s, p.len()), (1, 0));
        let (s, p) = take_frame(&mut buf).expect("exit frame");
        assert_eq!((s, p.as_slice()), (EXIT_STREAM, &b"-3"[..]));
        assert!(take_frame(&mut buf).is_none());
        assert_eq!(buf.len(), 3);
    }
}
