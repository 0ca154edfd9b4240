//! Endpoints of other engines (CNI runtimes, Docker): what the agent made
//! for each, persisted as one JSON file per endpoint under
//! `<state_dir>/endpoints/<id>.json`, written atomically. Those engines
//! never repeat a request after ferryd restarts (Docker sends no second
//! CreateEndpoint), so the agent must remember them to adopt and to remove
//! them.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{agent::NetworkRecord, files::write_atomically, portmap::PortMapping};

#[derive(Debug, thiserror::Error)]
pub enum EndpointStoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt endpoint file {path}: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One endpoint of another engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// ferry's id: 64 hex digits.
    pub id: String,
    /// The engine: `cni` or `docker`.
    pub kind: String,
    /// The engine's name for it (CNI: `<container id>/<ifname>`).
    pub key: String,
    /// What ps, DNS and conflicts call it.
    pub name: String,
    /// The namespace's path as the engine gave it.
    pub netns: String,
    pub network: NetworkRecord,
    pub ports: Vec<PortMapping>,
    /// Unix seconds.
    pub created: u64,
}

impl EndpointRecord {
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }

    /// How a port conflict names it.
    pub fn owner_name(&self) -> String {
        format!("{} endpoint {}", self.kind, self.name)
    }
}

pub struct EndpointStore {
    dir: PathBuf,
}

impl EndpointStore {
    pub fn new(state_dir: &Path) -> Result<Self, EndpointStoreError> {
        let dir = state_dir.join("endpoints");
        fs::create_dir_all(&dir).map_err(|source| EndpointStoreError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes the record atomically (see `files::write_atomically`).
    pub fn save(&self, record: &EndpointRecord) -> Result<(), EndpointStoreError> {
        let path = self.path(&record.id);
        let data =
            serde_json::to_vec_pretty(record).map_err(|source| EndpointStoreError::Corrupt {
                path: path.clone(),
                source,
            })?;
        write_atomically(&path, &data).map_err(|e| EndpointStoreError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        })
    }

    /// Forgets an endpoint. Missing is fine.
    pub fn remove(&self, id: &str) -> Result<(), EndpointStoreError> {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(EndpointStoreError::Io {
                op: "remove",
                path: self.path(id),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Every stored endpoint; leftover temp files go.
    pub fn load_all(&self) -> Result<Vec<EndpointRecord>, EndpointStoreError> {
        let io_err = |op, path: &Path| {
            let path = path.to_owned();
            move |source| EndpointStoreError::Io { op, path, source }
        };
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("read", &self.dir))? {
            let path = entry.map_err(io_err("read", &self.dir))?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {
                    let data = fs::read(&path).map_err(io_err("read", &path))?;
                    let record = serde_json::from_slice(&data).map_err(|source| {
                        EndpointStoreError::Corrupt {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    records.push(record);
                }
                Some("tmp") => fs::remove_file(&path).map_err(io_err("remove", &path))?,
                _ => {}
            }
        }
        records.sort_by_key(|r: &EndpointRecord| r.created);
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn record(id: &str, created: u64) -> EndpointRecord {
        EndpointRecord {
            id: id.to_owned(),
            kind: "cni".into(),
            key: format!("{id}/eth0"),
            name: "web".into(),
            netns: "/run/netns/x".into(),
            network: NetworkRecord {
                ip: Ipv4Addr::new(10, 88, 0, 2),
                mac: [2, 0x42, 10, 88, 0, 2],
                host_ifname: "fy0123456789ab".into(),
                host_ifindex: 7,
                host_mac: [2, 0xfe, 10, 88, 0, 2],
                netns_cookie: 9,
                network: "bridge".into(),
                aliases: vec![],
                ifname: "eth0".into(),
                external_ipam: false,
                macvlan: false,
            },
            ports: vec![],
            created,
        }
    }

    #[test]
    fn records_round_trip_and_leftovers_go() {
        let dir = std::env::temp_dir().join(format!("ferry-ep-store-{}", std::process::id()));
        let store = EndpointStore::new(&dir).expect("store");
        store.save(&record("b", 2)).expect("save b");
        store.save(&record("a", 1)).expect("save a");
        fs::write(dir.join("endpoints/c.json.tmp"), "{").expect("tmp");
        let all = store.load_all().expect("load");
        assert_eq!(all, vec![record("a", 1), record("b", 2)]);
        assert!(!dir.join("endpoints/c.json.tmp").exists());
        store.remove("a").expect("remove");
        store.remove("a").expect("remove twice");
        assert_eq!(store.load_all().expect("load").len(), 1);
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
