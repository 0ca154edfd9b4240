//! ferryd's persisted state: one JSON file per container under
//! `<state_dir>/containers/<id>/config.json`, written atomically.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt state file {path}: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Exited => "exited",
        }
    }
}

/// A container's network attachment, present while it runs.
pub use ferry_net::agent::NetworkRecord;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub hostname: String,
    /// Unix seconds.
    pub created: u64,
    pub status: Status,
    /// The init stage (the container's monitor) in ferryd's PID namespace.
    pub monitor_pid: Option<u32>,
    /// The workload, PID 1 of the container's PID namespace.
    pub pid: Option<u32>,
    /// `/proc/<pid>/stat` start time of the monitor, to tell a reused PID.
    pub monitor_start_time: Option<u64>,
    pub exit_code: Option<i32>,
    pub finished: Option<u64>,
    pub network: Option<NetworkRecord>,
    /// Networks joined with `ferry network connect`: eth1, eth2, ...
    #[serde(default)]
    pub extra_networks: Vec<NetworkRecord>,
    /// Published ports, as allocated (kept while stopped, like Docker).
    #[serde(default)]
    pub ports: Vec<crate::portmap::PortMapping>,
    /// The kernel's OOM killer killed a process of the container.
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub host_config: crate::api::HostConfig,
    /// The image as the user named it, and its ID; empty for the host's
    /// root and `--rootfs`.
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub image_id: String,
    /// `--user` or the image's `User`.
    #[serde(default)]
    pub user: String,
    /// The signal `stop` sends first (the image's `StopSignal`, or SIGTERM).
    #[serde(default)]
    pub stop_signal: String,
    /// `--userns-remap`: its ids on the host.
    #[serde(default)]
    pub userns: Option<ferry_runtime::userns::IdMap>,
    /// `-t` and `-i`, for those who attach.
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub open_stdin: bool,
}

impl ContainerRecord {
    /// Every network attachment: the first (eth0), then connected ones.
    pub fn attachments(&self) -> impl Iterator<Item = &NetworkRecord> {
        self.network.iter().chain(&self.extra_networks)
    }

    /// Its names in the embedded DNS: name and short ID.
    pub fn dns_names(&self) -> Vec<String> {
        vec![self.name.clone(), self.short_id().to_owned()]
    }

    /// How a port conflict names it.
    pub fn owner_name(&self) -> String {
        format!("container {}", self.name)
    }

    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }

    /// The monitor's PID if that process still exists and is the same one
    /// (its start time matches), not a later process that reused the PID.
    pub fn monitor_alive(&self) -> Option<u32> {
        let pid = self.monitor_pid?;
        let started = self.monitor_start_time?;
        (process_start_time(pid) == Some(started)).then_some(pid)
    }
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Result<Self, StateError> {
        let dir = state_dir.join("containers");
        fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The workload's output, JSON lines (see `logs`).
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("container.log")
    }

    /// What the container's monitor itself reports (its own errors).
    pub fn monitor_log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("monitor.log")
    }

    /// What the container wrote to its root: its overlay's upper directory.
    pub fn rootfs_upper(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("rootfs/upper")
    }

    /// Where clients attach to the workload's streams (see `attach`).
    pub fn attach_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("attach.sock")
    }

    /// The exit status, written by the monitor.
    pub fn exit_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("exit.json")
    }

    /// Creates the container's directory (for its log) before it runs.
    pub fn prepare(&self, id: &str) -> Result<PathBuf, StateError> {
        let dir = self.container_dir(id);
        fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Writes the record atomically (see `files::write_atomically`).
    pub fn save(&self, record: &ContainerRecord) -> Result<(), StateError> {
        let path = self.prepare(&record.id)?.join("config.json");
        let data = serde_json::to_vec_pretty(record).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        ferry_net::files::write_atomically(&path, &data).map_err(|e| StateError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        })
    }

    /// Removes everything stored for a container. Missing is fine.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.container_dir(id);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StateError::Io {
                op: "remove",
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Every stored container; directories without a config (a crash
    /// between `prepare` and `save`) are returned as orphans to remove.
    pub fn load_all(&self) -> Result<(Vec<ContainerRecord>, Vec<String>), StateError> {
        let mut records: Vec<ContainerRecord> = Vec::new();
        let mut orphans = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|source| StateError::Io {
            op: "list",
            path: self.dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path().join("config.json");
            match fs::read(&path) {
                Ok(data) => records.push(
                    serde_json::from_slice(&data)
                        .map_err(|source| StateError::Corrupt { path, source })?,
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => orphans.push(id),
                Err(source) => {
                    return Err(StateError::Io {
                        op: "read",
                        path,
                        source,
                    });
                }
            }
        }
        records.sort_by_key(|r| r.created);
        Ok((records, orphans))
    }
}

/// The start time (field 22 of /proc/<pid>/stat) of a live process.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn record(id: &str, created: u64) -> ContainerRecord {
        ContainerRecord {
            id: id.to_owned(),
            name: format!("n-{id}"),
            cmd: vec!["sleep".into(), "1".into()],
            env: vec![],
            hostname: "h".into(),
            created,
            status: Status::Running,
            monitor_pid: Some(42),
            pid: Some(43),
            monitor_start_time: Some(7),
            exit_code: None,
            finished: None,
            network: Some(NetworkRecord {
                ip: Ipv4Addr::new(10, 88, 0, 2),
                mac: [2, 0x42, 10, 88, 0, 2],
                host_ifname: "fyabc".into(),
                host_ifindex: 9,
                host_mac: [2, 0x46, 10, 88, 0, 2],
                netns_cookie: 7,
                network: "bridge".into(),
                aliases: vec![],
                ifname: "eth0".into(),
                external_ipam: false,
                macvlan: false,
            }),
            extra_networks: vec![],
            ports: vec![],
            oom_killed: false,
            working_dir: String::new(),
            host_config: Default::default(),
            image: String::new(),
            image_id: String::new(),
            user: String::new(),
            stop_signal: String::new(),
            tty: false,
            open_stdin: false,
            userns: None,
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn save_load_remove_round_trip() {
        let dir = tempdir("rt");
        let store = Store::new(&dir).expect("store");
        let (a, b) = (record("bbbb", 2), record("aaaa", 1));
        store.save(&a).expect("save a");
        store.save(&b).expect("save b");
        store.prepare("cccc").expect("orphan dir");
        let (loaded, orphans) = store.load_all().expect("load");
        assert_eq!(loaded, vec![b.clone(), a.clone()], "sorted by creation");
        assert_eq!(orphans, vec!["cccc".to_owned()]);
        store.remove("bbbb").expect("remove");
        store.remove("bbbb").expect("remove twice is fine");
        assert_eq!(store.load_all().expect("load").0, vec![b]);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn start_time_of_self_is_readable() {
        assert!(process_start_time(std::process::id()).is_some());
        assert!(process_start_time(u32::MAX).is_none());
    }
}
