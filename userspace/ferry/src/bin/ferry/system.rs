//! `ferry system df`, `ferry system prune`, `ferry container prune`,
//! `ferry image prune`: disk usage, and removing what nothing uses.

use std::{
    io::{BufRead as _, IsTerminal as _},
    process::ExitCode,
};

use ferry::{
    api::{PruneReport, SystemDf},
    client::Client,
};
use hyper::Method;

use crate::{NO_BODY, images::size};

#[derive(clap::Subcommand)]
pub enum SystemAction {
    /// What images and containers take on disk.
    Df,
    /// Remove stopped containers and images without a name (-a: every
    /// image no container uses).
    Prune(PruneArgs),
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Every image no container uses, not only those without a name.
    #[arg(short, long)]
    pub all: bool,
    /// Do not ask.
    #[arg(short, long)]
    pub force: bool,
}

/// Asks before removing, as Docker does; `--force` or a "y" goes on.
fn confirm(force: bool, what: &str) -> anyhow::Result<bool> {
    if force {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("this removes {what}: confirm with --force");
    }
    eprint!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Prints what a prune removed and the space it freed.
fn print_report(report: &PruneReport) -> anyhow::Result<()> {
    if !report.containers_deleted.is_empty() {
        out!("Deleted Containers:");
        for id in &report.containers_deleted {
            out!("{id}");
        }
        out!();
    }
    if !report.images_deleted.is_empty() {
        out!("Deleted Images:");
        for line in &report.images_deleted {
            match (&line.untagged, &line.deleted) {
                (Some(name), _) => out!("untagged: {name}"),
                (_, Some(id)) => out!("deleted: {id}"),
                _ => {}
            }
        }
        out!();
    }
    Ok(())
}

async fn prune_containers(client: &Client) -> anyhow::Result<PruneReport> {
    Ok(client
        .call(Method::POST, "/containers/prune", NO_BODY)
        .await?)
}

async fn prune_images(client: &Client, all: bool) -> anyhow::Result<PruneReport> {
    Ok(client
        .call(Method::POST, &format!("/images/prune?all={all}"), NO_BODY)
        .await?)
}

/// `ferry container prune`.
pub async fn container_prune(client: &Client, force: bool) -> anyhow::Result<ExitCode> {
    if !confirm(force, "all stopped containers")? {
        return Ok(ExitCode::FAILURE);
    }
    let report = prune_containers(client).await?;
    print_report(&report)?;
    out!("Total reclaimed space: {}", size(report.space_reclaimed));
    Ok(ExitCode::SUCCESS)
}

/// `ferry image prune`.
pub async fn image_prune(client: &Client, args: PruneArgs) -> anyhow::Result<ExitCode> {
    let what = if args.all {
        "all images without at least one container associated to them"
    } else {
        "all dangling images"
    };
    if !confirm(args.force, what)? {
        return Ok(ExitCode::FAILURE);
    }
    let report = prune_images(client, args.all).await?;
    print_report(&report)?;
    out!("Total reclaimed space: {}", size(report.space_reclaimed));
    Ok(ExitCode::SUCCESS)
}

pub async fn system(client: &Client, action: SystemAction) -> anyhow::Result<ExitCode> {
    match action {
        SystemAction::Df => {
            let df: SystemDf = client.call(Method::GET, "/system/df", NO_BODY).await?;
            let percent = |part: u64, whole: u64| (part * 100).checked_div(whole).unwrap_or(0);
            out!(
                "{:<12}{:<8}{:<8}{:<12}RECLAIMABLE",
                "TYPE",
                "TOTAL",
                "ACTIVE",
                "SIZE"
            );
            let active_images = df.images.iter().filter(|i| i.containers > 0).count();
            out!(
                "{:<12}{:<8}{:<8}{:<12}{} ({}%)",
                "Images",
                df.images.len(),
                active_images,
                size(df.layers_size),
                size(df.layers_reclaimable),
                percent(df.layers_reclaimable, df.layers_size)
            );
            let running = df.containers.iter().filter(|c| c.state == "running");
            let total_rw: u64 = df.containers.iter().map(|c| c.size_rw).sum();
            let stopped_rw: u64 = df
                .containers
                .iter()
                .filter(|c| c.state != "running")
                .map(|c| c.size_rw)
                .sum();
            out!(
                "{:<12}{:<8}{:<8}{:<12}{} ({}%)",
                "Containers",
                df.containers.len(),
                running.count(),
                size(total_rw),
                size(stopped_rw),
                percent(stopped_rw, total_rw)
            );
            Ok(ExitCode::SUCCESS)
        }
        SystemAction::Prune(args) => {
            let images = if args.all {
                "all images without at least one container associated to them"
            } else {
                "all dangling images"
            };
            if !confirm(args.force, &format!("all stopped containers and {images}"))? {
                return Ok(ExitCode::FAILURE);
            }
            let containers = prune_containers(client).await?;
            print_report(&containers)?;
            let images = prune_images(client, args.all).await?;
            print_report(&images)?;
            out!(
                "Total reclaimed space: {}",
                size(containers.space_reclaimed + images.space_reclaimed)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
