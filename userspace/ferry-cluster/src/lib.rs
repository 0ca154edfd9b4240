//! ferry's cluster membership, kept in etcd.
//!
//! Each ferryd claims a block of container addresses from the cluster's
//! pool and registers itself (underlay address, MAC) under a lease it keeps
//! alive. It watches the other members and hands a complete [`View`] of
//! them to whoever forwards: that side reconciles its state against each
//! view as a whole, so a lost event, a reconnect or a restart all end the
//! same way. When etcd cannot be reached the last view stands (marked
//! disconnected): nothing is torn down for lack of etcd.
//!
//! Keys (values are JSON):
//! - `/ferry/blocks/<addr>-<len>`: the node name that owns the block, under
//!   that node's lease.
//! - `/ferry/nodes/<name>`: [`Node`], under the same lease.

mod member;
mod store;

pub use member::{ClusterError, Membership, Node, Peer, Settings, View};
pub use store::{Store, StoreError};
