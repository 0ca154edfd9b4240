//! A TCP request/response pair for latency benchmarks: fixed-size messages,
//! one in flight, TCP_NODELAY; the client reports percentiles as JSON.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

const MESSAGE: usize = 64;
const WARMUP: u32 = 1000;

pub fn serve(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("bind :{port}"))?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut buf = [0u8; MESSAGE];
            while stream.read_exact(&mut buf).is_ok() {
                if stream.write_all(&buf).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

pub fn client(addr: &str, port: u16, count: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect((addr, port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e).context("connect"),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    };
    stream.set_nodelay(true)?;
    let mut buf = [7u8; MESSAGE];
    let mut samples = Vec::with_capacity(count as usize);
    let started = Instant::now();
    for i in 0..WARMUP + count {
        let t = Instant::now();
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
        if i >= WARMUP {
            samples.push(t.elapsed().as_nanos() as u64);
        }
    }
    let total = started.elapsed();
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "mean_us": mean,
            "tps": f64::from(WARMUP + count) / total.as_secs_f64(),
        })
    );
    Ok(())
}
