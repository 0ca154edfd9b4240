//! The other members of the cluster as the datapath sees them (`remotes`):
//! each one's block and own address, by prefix.

use std::path::Path;

use aya::maps::{
    Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use ferry_common::{REMOTE_BLOCK, RemoteNode};
use ipnet::Ipv4Net;

use super::{Datapath, DatapathError, MAP_REMOTES, map_err};

/// The blocks of other members in the `remotes` map pinned in `pin_dir`
/// (the kernel routes ferryd made for them), without loading the datapath:
/// for `ferryd reset`. None when nothing is pinned.
pub fn pinned_remote_blocks(pin_dir: &Path) -> Result<Vec<Ipv4Net>, DatapathError> {
    let path = pin_dir.join(MAP_REMOTES);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let data = MapData::from_pin(&path).map_err(map_err(MAP_REMOTES))?;
    let map = Map::from_map_data(data).map_err(map_err(MAP_REMOTES))?;
    let trie: LpmTrie<_, [u8; 4], RemoteNode> =
        LpmTrie::try_from(map).map_err(map_err(MAP_REMOTES))?;
    Ok(entries(&trie)?
        .into_iter()
        .filter(|(_, node)| node.kind == REMOTE_BLOCK)
        .map(|(net, _)| net)
        .collect())
}

fn entries<T: std::borrow::Borrow<MapData>>(
    trie: &LpmTrie<T, [u8; 4], RemoteNode>,
) -> Result<Vec<(Ipv4Net, RemoteNode)>, DatapathError> {
    let mut all = Vec::new();
    for entry in trie.iter() {
        let (key, node) = entry.map_err(map_err(MAP_REMOTES))?;
        let prefix = u8::try_from(key.prefix_len()).unwrap_or(32);
        if let Ok(net) = Ipv4Net::new(key.data().into(), prefix) {
            all.push((net, node));
        }
    }
    Ok(all)
}

impl Datapath {
    /// Every prefix in `remotes` and where it leads.
    pub fn remotes(&mut self) -> Result<Vec<(Ipv4Net, RemoteNode)>, DatapathError> {
        let trie: LpmTrie<_, [u8; 4], RemoteNode> =
            LpmTrie::try_from(self.map(MAP_REMOTES)?).map_err(map_err(MAP_REMOTES))?;
        entries(&trie)
    }

    /// Sends what is addressed inside `net` to `node`.
    pub fn set_remote(&mut self, net: Ipv4Net, node: RemoteNode) -> Result<(), DatapathError> {
        let mut trie: LpmTrie<_, [u8; 4], RemoteNode> =
            LpmTrie::try_from(self.map(MAP_REMOTES)?).map_err(map_err(MAP_REMOTES))?;
        let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
        let inserted = trie.insert(&key, node, 0);
        inserted.map_err(|e| self.insert_error(MAP_REMOTES, e))
    }

    /// Forgets `net`. Missing is fine.
    pub fn remove_remote(&mut self, net: Ipv4Net) -> Result<(), DatapathError> {
        let mut trie: LpmTrie<_, [u8; 4], RemoteNode> =
            LpmTrie::try_from(self.map(MAP_REMOTES)?).map_err(map_err(MAP_REMOTES))?;
        let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
        match trie.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(DatapathError::Map {
                map: MAP_REMOTES,
                source,
            }),
        }
    }
}
