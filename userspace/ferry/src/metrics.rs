//! Prometheus text metrics (exposition format 0.0.4) on an opt-in TCP
//! address: per-container datapath counters and cgroup usage, drops by
//! reason, map fill, conntrack entries, API requests.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use tracing::{info, warn};

use crate::daemon::Daemon;

/// API requests by method, route and status.
#[derive(Default)]
pub struct ApiCounters(std::sync::Mutex<BTreeMap<(String, String, u16), u64>>);

impl ApiCounters {
    fn count(&self, method: &str, route: &str, status: u16) {
        // A poisoned lock only means a panic elsewhere mid-increment: the
        // counts are still usable.
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<(String, String, u16), u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Axum middleware (a route layer, so the route template is known) that
/// counts every API request.
pub async fn count_requests(
    State(daemon): State<Arc<Daemon>>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let route = route.map_or_else(|| "unmatched".to_owned(), |r| r.as_str().to_owned());
    let response = next.run(request).await;
    daemon
        .api_counters()
        .count(&method, &route, response.status().as_u16());
    response
}

/// A metric family being written: `# HELP`, `# TYPE`, then samples.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    pub fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out, name }
    }

    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{}", self.name);
        if !labels.is_empty() {
            let body: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", body.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Label value escaping of the text format: backslash, quote, newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(daemon: Arc<Daemon>, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))?;
    info!(%addr, "metrics on http://{addr}/metrics");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(daemon);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(%e, "metrics server stopped");
        }
    });
    Ok(())
}

async fn metrics(State(daemon): State<Arc<Daemon>>) -> Response {
    match daemon.metrics_text().await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_the_text_format() {
        let mut out = String::new();
        let mut f = Family::new(&mut out, "ferry_x_total", "counter", "An example.");
        f.sample(&[("a", "b\"c"), ("d", "e\\f")], 3);
        f.sample(&[], 4);
        assert_eq!(
            out,
            "# HELP ferry_x_total An example.\n# TYPE ferry_x_total counter\n\
             ferry_x_total{a=\"b\\\"c\",d=\"e\\\\f\"} 3\nferry_x_total 4\n"
        );
    }
}
