//! etcd, reached through any of its members.
//!
//! The client crate keeps one channel per endpoint list and does not move
//! on when a member dies: with one member of three down, a third of the
//! calls failed at once. So each member gets a client of its own, and a
//! call that fails on one is tried on the next; the last member that
//! answered is asked first.

use std::{
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use etcd_client::{Client, ConnectOptions};
use tracing::debug;

/// How long one request may take before the next member is tried. etcd
/// answers in milliseconds when it has a leader; without one a write
/// waits for it, and ferry moves on rather than waits.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bad etcd endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("no etcd endpoint given")]
    NoEndpoint,
    #[error("etcd {what}: no member answered ({last})")]
    Unreachable { what: String, last: String },
}

pub struct Store {
    endpoints: Vec<String>,
    clients: Vec<Client>,
    /// The member that answered last.
    current: AtomicUsize,
}

impl Store {
    /// Clients for `endpoints` (`http://host:port` or `host:port`). No
    /// member needs to be up: connections are made on first use.
    pub async fn new(endpoints: &[String]) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::NoEndpoint);
        }
        let options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            // Watches and reads fail on a member without a leader instead
            // of serving a stale view as current.
            .with_require_leader(true);
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let client = Client::connect([endpoint.as_str()], Some(options.clone()))
                .await
                .map_err(|e| StoreError::Endpoint {
                    endpoint: endpoint.clone(),
                    reason: e.to_string(),
                })?;
            clients.push(client);
        }
        Ok(Self {
            endpoints: endpoints.to_vec(),
            clients,
            current: AtomicUsize::new(0),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Runs `op` against each member in turn, starting with the one that
    /// answered last, until one succeeds.
    pub async fn call<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..self.clients.len() {
            let at = (start + i) % self.clients.len();
            match op(self.clients[at].clone()).await {
                Ok(value) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(e) => {
                    debug!(endpoint = %self.endpoints[at], %e, what, "etcd member failed");
                    last = format!("{}: {e}", self.endpoints[at]);
                }
            }
        }
        Err(StoreError::Unreachable {
            what: what.to_owned(),
            last,
        })
    }
}
