//! `ferry node ls`: the cluster's members as this ferryd sees them.

use std::process::ExitCode;

use clap::Subcommand;
use ferry::{api::ClusterJson, client::Client};
use hyper::Method;

use crate::NO_BODY;

#[derive(Subcommand)]
pub enum NodeAction {
    /// Members, their blocks, underlay addresses, modes and lease time
    /// left, and whether this ferryd reaches etcd.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub async fn node(client: &Client, action: NodeAction) -> anyhow::Result<ExitCode> {
    let NodeAction::Ls { json } = action;
    let c: ClusterJson = client.call(Method::GET, "/cluster", NO_BODY).await?;
    if json {
        out!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(ExitCode::SUCCESS);
    }
    let etcd = match (&c.error, c.last_contact_secs) {
        (None, _) => "connected".to_owned(),
        (Some(e), Some(ago)) => format!("unreachable for {ago}s ({e})"),
        (Some(e), None) => format!("never reached ({e})"),
    };
    out!("etcd:  {} ({})", c.endpoints.join(","), etcd);
    out!(
        "{:<20} {:<18} {:<16} {:<12} LEASE",
        "NAME",
        "BLOCK",
        "ADDRESS",
        "MODE"
    );
    for m in &c.members {
        let lease = m.lease_ttl.map_or("-".to_owned(), |t| format!("{t}s"));
        out!(
            "{:<20} {:<18} {:<16} {:<12} {}",
            m.name,
            m.block,
            m.address,
            m.mode,
            lease
        );
    }
    Ok(ExitCode::SUCCESS)
}
