//! Joining the cluster, staying in it, and watching the other members.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use ipnet::Ipv4Net;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::store::{Store, StoreError};

const NODES: &str = "/ferry/nodes/";
const BLOCKS: &str = "/ferry/blocks/";

/// After a failure, how long before the next try.
const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the cluster pool {pool} has no free /{len} block left")]
    PoolFull { pool: Ipv4Net, len: u8 },
    #[error("block {block} belongs to node {owner:?}, not to this node {node:?}")]
    BlockTaken {
        block: Ipv4Net,
        owner: String,
        node: String,
    },
    #[error("bad record at {key}: {reason}")]
    Record { key: String, reason: String },
}

/// What a ferryd needs to take part.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoints: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// The cluster-wide pool of container addresses.
    pub pool: Ipv4Net,
    /// The prefix length of each node's block.
    pub block_len: u8,
    /// How long a node stays a member without renewing its lease.
    pub lease_ttl: Duration,
    /// The underlay address other nodes reach this one at.
    pub address: Ipv4Addr,
    /// The MAC of the interface holding `address`.
    pub mac: [u8; 6],
}

/// A member as registered in etcd.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub name: String,
    pub block: Ipv4Net,
    pub address: Ipv4Addr,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

impl Node {
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        let mut mac = [0u8; 6];
        let mut parts = self.mac.split(':');
        for byte in &mut mac {
            *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
        }
        parts.next().is_none().then_some(mac)
    }
}

/// The other members as last seen, and whether etcd is reachable now.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub peers: BTreeMap<String, Peer>,
    /// Whether the last call to etcd succeeded.
    pub connected: bool,
    /// Why the last call failed, while not connected.
    pub error: Option<String>,
    /// When etcd last answered.
    pub last_contact: Option<SystemTime>,
}

/// A member and its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: Node,
    pub lease: i64,
}

pub struct Membership {
    store: Arc<Store>,
    settings: Settings,
    block: Ipv4Net,
    view: watch::Receiver<View>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Membership {
    /// Joins the cluster: claims a block (`previous`, this node's block
    /// from an earlier run, if it is still free or ours) and starts
    /// keeping the lease and watching the others. With `previous` known,
    /// etcd need not be reachable now: the node goes on with that block
    /// and joins when etcd answers. Without it, a block must be claimed
    /// within `wait`.
    pub async fn join(
        settings: Settings,
        previous: Option<Ipv4Net>,
        wait: Duration,
    ) -> Result<Self, ClusterError> {
        let store = Arc::new(Store::new(&settings.endpoints).await?);
        let (block, lease) = match previous {
            Some(block) => (block, None),
            None => {
                let (block, lease) = first_claim(&store, &settings, wait).await?;
                (block, Some(lease))
            }
        };
        let (tx, view) = watch::channel(View::default());
        let task = tokio::spawn(stay(Arc::clone(&store), settings.clone(), block, lease, tx));
        Ok(Self {
            store,
            settings,
            block,
            view,
            task,
        })
    }

    pub fn block(&self) -> Ipv4Net {
        self.block
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every change of the view.
    pub fn subscribe(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// The seconds each lease has left, as etcd counts them (missing:
    /// unknown or expired).
    pub async fn lease_ttls(&self, leases: &[i64]) -> BTreeMap<i64, i64> {
        let mut ttls = BTreeMap::new();
        for &id in leases {
            let got = self
                .store
                .call("lease time to live", |mut c| async move {
                    c.lease_time_to_live(id, None).await
                })
                .await;
            if let Ok(resp) = got
                && resp.ttl() >= 0
            {
                ttls.insert(id, resp.ttl());
            }
        }
        ttls
    }
}

fn block_key(block: Ipv4Net) -> String {
    format!("{BLOCKS}{}-{}", block.addr(), block.prefix_len())
}

fn node_key(name: &str) -> String {
    format!("{NODES}{name}")
}

/// A block for this node: one it owns already (a restart within its old
/// lease), else the first free one of the pool. Claimed for real (under a
/// lease) by `register`.
async fn choose_block(store: &Store, settings: &Settings) -> Result<Ipv4Net, ClusterError> {
    let taken = store
        .call("list blocks", |mut c| async move {
            c.get(BLOCKS, Some(GetOptions::new().with_prefix())).await
        })
        .await?;
    let mut owners = BTreeMap::new();
    for kv in taken.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        owners.insert(key, String::from_utf8_lossy(kv.value()).into_owned());
    }
    let blocks = settings
        .pool
        .subnets(settings.block_len)
        .map_err(|_| ClusterError::PoolFull {
            pool: settings.pool,
            len: settings.block_len,
        })?;
    let mut free = None;
    for block in blocks {
        match owners.get(&block_key(block)) {
            Some(owner) if *owner == settings.node => return Ok(block),
            None if free.is_none() => free = Some(block),
            _ => {}
        }
    }
    free.ok_or(ClusterError::PoolFull {
        pool: settings.pool,
        len: settings.block_len,
    })
}

/// A first start's block, claimed for real before it is used: a block
/// that looked free but another node claimed first (two nodes starting at
/// once) is given up for the next. Returns the block and its lease.
async fn first_claim(
    store: &Store,
    settings: &Settings,
    wait: Duration,
) -> Result<(Ipv4Net, i64), ClusterError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let claimed = match choose_block(store, settings).await {
            Ok(block) => register(store, settings, block)
                .await
                .map(|lease| (block, lease)),
            Err(e) => Err(e),
        };
        match claimed {
            Ok(claimed) => return Ok(claimed),
            Err(ClusterError::BlockTaken { block, owner, .. }) => {
                info!(%block, %owner, "block claimed by another node first; choosing again");
            }
            Err(ClusterError::Store(e)) if tokio::time::Instant::now() < deadline => {
                warn!(%e, "cannot claim an address block yet; retrying");
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Claims `block` and registers this node, both under a new lease.
async fn register(store: &Store, settings: &Settings, block: Ipv4Net) -> Result<i64, ClusterError> {
    let ttl = i64::try_from(settings.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let lease = store
        .call("grant lease", |mut c| async move {
            c.lease_grant(ttl, None).await
        })
        .await?
        .id();
    let key = block_key(block);
    let name = settings.node.clone();
    // Free (never created, or its owner's lease expired) or ours already.
    let claim = |cmp: Compare| {
        Txn::new().when([cmp]).and_then([TxnOp::put(
            key.clone(),
            name.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )])
    };
    let claimed = store
        .call("claim block", |mut c| {
            let txn = claim(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
            async move { c.txn(txn).await }
        })
        .await?
        .succeeded()
        || store
            .call("reclaim block", |mut c| {
                let txn = claim(Compare::value(key.clone(), CompareOp::Equal, name.clone()));
                async move { c.txn(txn).await }
            })
            .await?
            .succeeded();
    if !claimed {
        let owner = store
            .call("read block owner", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .unwrap_or_default();
        return Err(ClusterError::BlockTaken {
            block,
            owner,
            node: settings.node.clone(),
        });
    }
    let node = Node {
        name: settings.node.clone(),
        block,
        address: settings.address,
        mac: settings
            .mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    };
    let value = serde_json::to_string(&node).map_err(|e| ClusterError::Record {
        key: node_key(&node.name),
        reason: e.to_string(),
    })?;
    store
        .call("register node", |mut c| {
            let (key, value) = (node_key(&node.name), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
    Ok(lease)
}

/// Keeps this node in the cluster for as long as ferryd runs: registers
/// (unless `registered` is a lease a first claim just took), renews the
/// lease and follows the other members; on any failure, the view is
/// marked disconnected (its peers stay) and all of it starts over.
async fn stay(
    store: Arc<Store>,
    settings: Settings,
    block: Ipv4Net,
    mut registered: Option<i64>,
    tx: watch::Sender<View>,
) {
    let mut announced = false;
    loop {
        let lease = match registered.take() {
            Some(lease) => Ok(lease),
            None => register(&store, &settings, block).await,
        };
        let failure = match lease {
            Ok(lease) => {
                if !announced {
                    info!(node = %settings.node, %block, lease, "joined the cluster");
                    announced = true;
                }
                tokio::select! {
                    e = keep_alive(&store, lease, settings.lease_ttl) => e,
                    e = follow(&store, &settings.node, &tx) => e,
                }
            }
            Err(e) => e,
        };
        let reason = failure.to_string();
        tx.send_if_modified(|view| {
            let changed = view.connected || view.error.as_deref() != Some(&reason);
            if changed {
                warn!(error = %reason, "etcd unreachable; forwarding goes on with the last known members");
            }
            view.connected = false;
            view.error = Some(reason.clone());
            changed
        });
        tokio::time::sleep(RETRY).await;
    }
}

/// Renews `lease` every third of its TTL until that fails.
async fn keep_alive(store: &Store, lease: i64, ttl: Duration) -> ClusterError {
    let opened = store
        .call("keep lease alive", |mut c| async move {
            c.lease_keep_alive(lease).await
        })
        .await;
    let (mut keeper, mut responses) = match opened {
        Ok(streams) => streams,
        Err(e) => return e.into(),
    };
    let every = (ttl / 3).max(Duration::from_millis(300));
    loop {
        let renewed = async {
            keeper.keep_alive().await?;
            responses.message().await
        };
        let lost = |reason: String| {
            ClusterError::Store(StoreError::Unreachable {
                what: "keep lease alive".into(),
                last: reason,
            })
        };
        match tokio::time::timeout(every, renewed).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return lost(format!("lease {lease} expired")),
            Ok(Ok(None)) => return lost("stream closed".into()),
            Ok(Err(e)) => return lost(e.to_string()),
            Err(_) => return lost("no answer in time".into()),
        }
        tokio::time::sleep(every).await;
    }
}

/// Lists the members, then follows their changes, sending the whole view
/// after each; returns when the listing or the watch fails.
async fn follow(store: &Store, me: &str, tx: &watch::Sender<View>) -> ClusterError {
    let listed = store
        .call("list nodes", |mut c| async move {
            c.get(NODES, Some(GetOptions::new().with_prefix())).await
        })
        .await;
    let listed = match listed {
        Ok(resp) => resp,
        Err(e) => return e.into(),
    };
    let revision = listed.header().map_or(0, |h| h.revision());
    let mut peers = BTreeMap::new();
    for kv in listed.kvs() {
        if let Some(peer) = peer_of(kv.key(), kv.value(), kv.lease(), me) {
            peers.insert(peer.node.name.clone(), peer);
        }
    }
    publish(tx, |view| view.peers = peers);
    let watched = store
        .call("watch nodes", |mut c| async move {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            c.watch(NODES, Some(options)).await
        })
        .await;
    let mut stream = match watched {
        Ok(stream) => stream,
        Err(e) => return e.into(),
    };
    let ended = |last: String| {
        ClusterError::Store(StoreError::Unreachable {
            what: "watch nodes".into(),
            last,
        })
    };
    loop {
        let msg = match stream.message().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return ended("stream closed".into()),
            Err(e) => return ended(e.to_string()),
        };
        if msg.canceled() {
            return ended(format!("cancelled: {}", msg.cancel_reason()));
        }
        let events = msg.events();
        if events.is_empty() {
            continue;
        }
        publish(tx, |view| {
            for event in events {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    etcd_client::EventType::Put => {
                        if let Some(peer) = peer_of(kv.key(), kv.value(), kv.lease(), me) {
                            view.peers.insert(peer.node.name.clone(), peer);
                        }
                    }
                    etcd_client::EventType::Delete => {
                        let key = String::from_utf8_lossy(kv.key());
                        if let Some(name) = key.strip_prefix(NODES) {
                            view.peers.remove(name);
                        }
                    }
                }
            }
        });
    }
}

/// Applies `change` and marks the view connected.
fn publish(tx: &watch::Sender<View>, change: impl FnOnce(&mut View)) {
    tx.send_modify(|view| {
        change(view);
        if !view.connected {
            info!("etcd reachable");
        }
        view.connected = true;
        view.error = None;
        view.last_contact = Some(SystemTime::now());
    });
}

/// A member's record, unless it is this node's or unreadable (logged).
fn peer_of(key: &[u8], value: &[u8], lease: i64, me: &str) -> Option<Peer> {
    let key = String::from_utf8_lossy(key);
    match serde_json::from_slice::<Node>(value) {
        Ok(node) if node.name == me => None,
        Ok(node) if node.mac_bytes().is_none() => {
            warn!(%key, mac = %node.mac, "ignoring a member with a bad MAC");
            None
        }
        Ok(node) => Some(Peer { node, lease }),
        Err(e) => {
            warn!(%key, %e, "ignoring an unreadable member record");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        let node = |mac: &str| Node {
            name: "a".into(),
            block: "10.88.1.0/24".parse().expect("net"),
            address: Ipv4Addr::new(10, 0, 0, 1),
            mac: mac.into(),
        };
        assert_eq!(
            node("02:00:0a:ff:00:01").mac_bytes(),
            Some([2, 0, 10, 255, 0, 1])
        );
        assert_eq!(node("02:00:0a:ff:00").mac_bytes(), None);
        assert_eq!(node("02:00:0a:ff:00:01:02").mac_bytes(), None);
        assert_eq!(node("zz:00:0a:ff:00:01").mac_bytes(), None);
    }

    #[test]
    fn keys_name_blocks_and_nodes() {
        let block: Ipv4Net = "10.88.3.0/24".parse().expect("net");
        assert_eq!(block_key(block), "/ferry/blocks/10.88.3.0-24");
        assert_eq!(node_key("h1"), "/ferry/nodes/h1");
    }
}
