//! `ferry stats`: CPU, memory, pids and network usage per container.

use std::process::ExitCode;

use ferry::{
    api::{ContainerJson, Stats},
    client::Client,
};
use hyper::Method;

use crate::NO_BODY;

/// `ferry stats`: one table of usage; CPU % is the CPU time used between
/// two samples over the time between them (100% = one CPU busy).
pub async fn stats(
    client: &Client,
    containers: Vec<String>,
    once: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let names = if containers.is_empty() {
        let list: Vec<ContainerJson> = client
            .call(Method::GET, "/containers/json", NO_BODY)
            .await?;
        list.into_iter().map(|c| c.name).collect()
    } else {
        containers
    };
    let sample = || async {
        let mut out = Vec::new();
        for name in &names {
            let s: Stats = client
                .call(Method::GET, &format!("/containers/{name}/stats"), NO_BODY)
                .await?;
            out.push(s);
        }
        Ok::<_, anyhow::Error>(out)
    };
    let mut before = sample().await?;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(if once {
            500
        } else {
            1000
        }))
        .await;
        let after = sample().await?;
        let cpu_percent = |a: &Stats, b: &Stats| {
            let elapsed = b.read_ns.saturating_sub(a.read_ns).max(1);
            b.usage.cpu_ns.saturating_sub(a.usage.cpu_ns) as f64 * 100.0 / elapsed as f64
        };
        if json {
            let rows: Vec<serde_json::Value> = names
                .iter()
                .zip(before.iter().zip(&after))
                .map(|(name, (a, b))| {
                    let mut row = serde_json::to_value(b)?;
                    row["Name"] = name.clone().into();
                    row["CpuPercent"] = cpu_percent(a, b).into();
                    Ok(row)
                })
                .collect::<Result<_, serde_json::Error>>()?;
            out!("{}", serde_json::to_string_pretty(&rows)?);
            return Ok(ExitCode::SUCCESS);
        }
        if !once {
            // Clear the screen and go home, as docker stats does.
            print!("\x1b[2J\x1b[H");
        }
        out!(
            "{:<20}{:>8}{:>22}{:>7}{:>24}{:>12}",
            "NAME",
            "CPU %",
            "MEM USAGE / LIMIT",
            "PIDS",
            "NET I/O (RX / TX)",
            "THROTTLED"
        );
        for ((name, a), b) in names.iter().zip(&before).zip(&after) {
            let cpu = cpu_percent(a, b);
            let limit = if b.usage.memory_limit == 0 {
                "-".to_owned()
            } else {
                human(b.usage.memory_limit)
            };
            out!(
                "{:<20}{:>7.2}%{:>22}{:>7}{:>24}{:>12}",
                name,
                cpu,
                format!("{} / {}", human(b.usage.memory), limit),
                b.usage.pids,
                format!("{} / {}", human(b.net.rx_bytes), human(b.net.tx_bytes)),
                b.usage.nr_throttled
            );
        }
        if once {
            return Ok(ExitCode::SUCCESS);
        }
        before = after;
    }
}

/// Bytes in binary units, as docker stats prints them.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.2}{}", UNITS[unit])
    }
}
