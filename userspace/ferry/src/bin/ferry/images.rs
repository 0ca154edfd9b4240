//! `ferry image` (ls, rm, inspect, load, tag) and its Docker-style
//! shortcuts `ferry images`, `rmi`, `load`, `tag`.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::Subcommand;
use ferry::{
    api::{ImageDeleted, ImageInspect, ImageSave, ImageSummary},
    client::Client,
};
use hyper::Method;

pub use ferry_api::endpoint::encode;

use crate::NO_BODY;

#[derive(Subcommand)]
pub enum ImageAction {
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Only IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images (a name of an image with several only untags it).
    #[command(alias = "remove")]
    Rm {
        /// Remove an image by ID even when it has several names.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Print images' details as JSON.
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load images from a `docker save` archive or an OCI image layout in a
    /// tar (plain, gzip or zstd).
    Load {
        /// The archive (default: standard input).
        #[arg(short, long)]
        input: Option<PathBuf>,
        /// Print nothing.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Remove images without a name that no container uses (-a: every
    /// image no container uses).
    Prune(crate::system::PruneArgs),
    /// Write images to a tar (an OCI layout with Docker's manifest.json).
    Save {
        /// The file (default: standard output, not a terminal).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Pull an image from a registry.
    Pull {
        /// Print only the image's name at the end.
        #[arg(short, long)]
        quiet: bool,
        name: String,
    },
}

/// `2 hours ago`, as Docker prints ages.
fn ago(rfc3339: &str) -> String {
    // The weak parser takes fractions and `Z`, not offsets: the first 19
    // characters are the time itself.
    let parsed = humantime::parse_rfc3339_weak(rfc3339)
        .or_else(|_| humantime::parse_rfc3339_weak(rfc3339.get(..19).unwrap_or_default()));
    let Ok(then) = parsed else {
        return String::new();
    };
    let secs = SystemTime::now()
        .duration_since(then)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (n, unit) = match secs {
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s if s < 86_400 * 30 => (s / 86_400, "day"),
        s if s < 86_400 * 365 => (s / (86_400 * 30), "month"),
        s => (s / (86_400 * 365), "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Sizes as Docker prints them (decimal units).
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1000 => format!("{b}B"),
        b if b < 1_000_000 => format!("{:.1}kB", b as f64 / 1e3),
        b if b < 1_000_000_000 => format!("{:.1}MB", b as f64 / 1e6),
        b => format!("{:.2}GB", b as f64 / 1e9),
    }
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

pub async fn image(client: &Client, action: ImageAction) -> anyhow::Result<ExitCode> {
    match action {
        ImageAction::Ls { quiet } => {
            let list: Vec<ImageSummary> = client.call(Method::GET, "/images/json", NO_BODY).await?;
            if quiet {
                for i in &list {
                    out!("{}", short(&i.id));
                }
                return Ok(ExitCode::SUCCESS);
            }
            out!(
                "{:<40}{:<16}{:<16}{:<18}SIZE",
                "REPOSITORY",
                "TAG",
                "IMAGE ID",
                "CREATED"
            );
            for i in &list {
                let names: Vec<(&str, &str)> = if i.repo_tags.is_empty() {
                    vec![("<none>", "<none>")]
                } else {
                    i.repo_tags
                        .iter()
                        .map(|t| ferry_image::split_tag(t))
                        .collect()
                };
                for (repo, tag) in names {
                    out!(
                        "{:<40}{:<16}{:<16}{:<18}{}",
                        repo,
                        tag,
                        short(&i.id),
                        ago(&i.created),
                        size(i.size)
                    );
                }
            }
        }
        ImageAction::Rm { force, images } => {
            let mut failed = false;
            for name in images {
                let path = format!("/images/remove?name={}&force={force}", encode(&name));
                match client
                    .call::<Vec<ImageDeleted>>(Method::DELETE, &path, NO_BODY)
                    .await
                {
                    Ok(report) => {
                        for r in report {
                            if let Some(u) = r.untagged {
                                out!("Untagged: {u}");
                            }
                            if let Some(d) = r.deleted {
                                out!("Deleted: {d}");
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("ferry: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        ImageAction::Inspect { images } => {
            let mut all = Vec::new();
            for name in images {
                let path = format!("/images/inspect?name={}", encode(&name));
                let i: ImageInspect = client.call(Method::GET, &path, NO_BODY).await?;
                all.push(i);
            }
            out!("{}", serde_json::to_string_pretty(&all)?);
        }
        ImageAction::Load { input, quiet } => {
            let loaded: Vec<ferry_image::LoadedImage> = match &input {
                Some(path) => {
                    let file = tokio::fs::File::open(path)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
                    client.upload("/images/load", file).await?
                }
                None => client.upload("/images/load", tokio::io::stdin()).await?,
            };
            if !quiet {
                for image in loaded {
                    if image.names.is_empty() {
                        out!("Loaded image ID: {}", image.id);
                    }
                    for name in image.names {
                        out!("Loaded image: {name}");
                    }
                }
            }
        }
        ImageAction::Pull { quiet, name } => return pull(client, &name, quiet).await,
        ImageAction::Save { output, images } => {
            save(client, output.as_deref(), images).await?;
        }
        ImageAction::Prune(args) => return crate::system::image_prune(client, args).await,
        ImageAction::Tag { source, target } => {
            let path = format!(
                "/images/tag?source={}&target={}",
                encode(&source),
                encode(&target)
            );
            client
                .call::<serde_json::Value>(Method::POST, &path, NO_BODY)
                .await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a pull's progress as it comes, one line per layer event (the
/// download counter redrawn in place on a terminal); fails on the final
/// `Error` line.
async fn pull(client: &Client, name: &str, quiet: bool) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal as _, Write as _};

    use http_body_util::BodyExt as _;
    let path = format!("/images/pull?name={}", encode(name));
    let auth = crate::credentials::for_image(name)?;
    let mut body = client.stream(Method::POST, &path, auth.as_ref()).await?;
    let tty = std::io::stdout().is_terminal() && !quiet;
    let mut stdout = std::io::stdout();
    let mut buf = Vec::new();
    // Whether the last line printed is a counter to overwrite.
    let mut counting = false;
    let mut result = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("reading the pull's progress: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let v: serde_json::Value = serde_json::from_slice(&line)?;
            if let Some(e) = v.get("Error").and_then(|e| e.as_str()) {
                if counting {
                    writeln!(stdout)?;
                }
                anyhow::bail!("{e}");
            }
            if let Some(image) = v.get("Image") {
                result = Some(image.clone());
                continue;
            }
            if quiet {
                continue;
            }
            let id = v["Id"].as_str().unwrap_or_default();
            let status = v["Status"].as_str().unwrap_or_default();
            if status == "Downloading" {
                if tty {
                    let (cur, total) = (v["Current"].as_u64(), v["Total"].as_u64());
                    write!(
                        stdout,
                        "\r{id}: Downloading {}/{}\x1b[K",
                        size(cur.unwrap_or(0)),
                        size(total.unwrap_or(0))
                    )?;
                    stdout.flush()?;
                    counting = true;
                }
                continue;
            }
            if counting {
                write!(stdout, "\r")?;
                counting = false;
            }
            let clear = if tty { "\x1b[K" } else { "" };
            writeln!(stdout, "{id}: {status}{clear}")?;
        }
    }
    let Some(image) = result else {
        anyhow::bail!("ferryd ended the pull without a result");
    };
    let names: Vec<&str> = image["Names"]
        .as_array()
        .map(|n| n.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_default();
    let shown = names.first().copied().unwrap_or(name);
    if !quiet {
        out!(
            "Status: Downloaded {shown} ({})",
            image["Id"].as_str().unwrap_or_default()
        );
    }
    out!("{shown}");
    Ok(ExitCode::SUCCESS)
}

/// `ferry save`: the archive ferryd writes, to a file or standard output.
async fn save(
    client: &Client,
    output: Option<&std::path::Path>,
    names: Vec<String>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;

    use http_body_util::BodyExt as _;
    use tokio::io::AsyncWriteExt as _;
    if output.is_none() && std::io::stdout().is_terminal() {
        anyhow::bail!("refusing to write an archive to a terminal: use -o FILE or redirect");
    }
    let mut body = client
        .stream(Method::POST, "/images/save", Some(&ImageSave { names }))
        .await?;
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = match output {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("reading the archive: {e}"))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).await?;
        }
    }
    out.flush().await?;
    Ok(())
}
