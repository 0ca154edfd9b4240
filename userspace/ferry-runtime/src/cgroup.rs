//! Container cgroups: limits, membership, usage, OOM kills.
//!
//! cgroup v2 is used when the memory, cpu and pids controllers are enabled
//! at the cgroup2 mount (a unified host); otherwise the v1 hierarchies are
//! used, one directory per controller (a hybrid host such as this project's
//! CI machine: controllers on v1, cgroup2 only for the BPF socket hooks).
//! Every container gets `<parent>/<id>` in each hierarchy; the workload
//! joins before exec by writing `0` (itself) to each `cgroup.procs`.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// The v1 controllers ferry uses, by hierarchy.
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "cpuset", "pids"];
/// The v2 controllers ferry needs enabled to use v2.
const V2_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuset", "pids"];
/// CFS period for `--cpus`, as Docker uses.
const CPU_PERIOD_US: u64 = 100_000;
/// Docker's floor for `-m`.
const MIN_MEMORY: u64 = 6 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup controllers: {0}")]
    Unsupported(String),
    #[error("invalid {flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Resource limits, in Docker's units (`HostConfig` field names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Resources {
    /// Bytes; 0 = unlimited.
    #[serde(default)]
    pub memory: u64,
    /// Memory plus swap in bytes; 0 = twice `memory`, -1 = unlimited swap.
    #[serde(default)]
    pub memory_swap: i64,
    /// CPUs in units of 1e-9 (`--cpus 1.5` = 1_500_000_000); 0 = unlimited.
    #[serde(default)]
    pub nano_cpus: u64,
    /// Relative weight (default 1024); 0 = default.
    #[serde(default)]
    pub cpu_shares: u64,
    /// CPUs allowed, e.g. `0-1`; empty = all.
    #[serde(default)]
    pub cpuset_cpus: String,
    /// Maximum processes; 0 or negative = unlimited.
    #[serde(default)]
    pub pids_limit: i64,
}

impl Resources {
    /// Rejects what Docker rejects, with its reasons.
    pub fn validate(&self) -> Result<(), CgroupError> {
        let invalid = |flag, reason: String| Err(CgroupError::Invalid { flag, reason });
        if self.memory != 0 && self.memory < MIN_MEMORY {
            return invalid("--memory", "the minimum memory limit is 6MB".into());
        }
        if self.memory_swap > 0 {
            if self.memory == 0 {
                return invalid(
                    "--memory-swap",
                    "it needs --memory: set both, or only --memory".into(),
                );
            }
            if (self.memory_swap as u64) < self.memory {
                return invalid(
                    "--memory-swap",
                    "it is memory plus swap and must be at least --memory".into(),
                );
            }
        } else if self.memory_swap < -1 {
            return invalid("--memory-swap", "use -1 for unlimited swap".into());
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        if self.nano_cpus != 0
            && (self.nano_cpus < 10_000_000 || self.nano_cpus > cpus * 1_000_000_000)
        {
            return invalid(
                "--cpus",
                format!("the range is 0.01 to {cpus}.00, as there are only {cpus} CPUs"),
            );
        }
        if self.cpu_shares != 0 && !(2..=262_144).contains(&self.cpu_shares) {
            return invalid("--cpu-shares", "the range is 2 to 262144".into());
        }
        if !self.cpuset_cpus.is_empty() && !valid_cpu_list(&self.cpuset_cpus) {
            return invalid(
                "--cpuset-cpus",
                format!("{:?} is not a CPU list such as 0-1,3", self.cpuset_cpus),
            );
        }
        Ok(())
    }

    /// The swap-inclusive limit to write, in bytes (`None`: unlimited).
    fn memory_and_swap(&self) -> Option<u64> {
        match (self.memory, self.memory_swap) {
            (0, _) | (_, -1) => None,
            (m, 0) => Some(m * 2),
            (_, s) => Some(s as u64),
        }
    }
}

fn valid_cpu_list(list: &str) -> bool {
    list.split(',').all(|part| {
        let mut ends = part.splitn(2, '-').map(|n| n.parse::<u32>());
        match (ends.next(), ends.next()) {
            (Some(Ok(_)), None) => true,
            (Some(Ok(a)), Some(Ok(b))) => a <= b,
            _ => false,
        }
    })
}

/// Parses Docker's memory sizes: `256m`, `1g`, `512k`, `100b`, `1048576`.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let v = value.trim().to_ascii_lowercase();
    let v = v.strip_suffix('b').filter(|s| !s.is_empty()).unwrap_or(&v);
    let (digits, unit) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&v[..i], c),
        _ => (v, ' '),
    };
    let shift = match unit {
        ' ' => 0,
        'k' => 10,
        'm' => 20,
        'g' => 30,
        't' => 40,
        _ => return Err(format!("invalid size {value:?}: unknown unit")),
    };
    let n: f64 = digits
        .parse()
        .map_err(|_| format!("invalid size {value:?}: expected a number with k, m, g or t"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("invalid size {value:?}"));
    }
    Ok((n * (1u64 << shift) as f64) as u64)
}

/// Usage read from a container's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Usage {
    /// CPU time of all the container's processes, nanoseconds.
    pub cpu_ns: u64,
    /// Periods in which the CPU quota throttled the container.
    pub nr_throttled: u64,
    /// Memory in use, page cache that can be dropped left out (as Docker).
    pub memory: u64,
    /// The memory limit in force (0 = none).
    pub memory_limit: u64,
    pub pids: u64,
    /// Processes the kernel's OOM killer killed in this cgroup.
    pub oom_kills: u64,
}

#[derive(Debug, Clone)]
enum Layout {
    /// The cgroup2 mount.
    V2(PathBuf),
    /// Mount point of each v1 controller.
    V1(BTreeMap<&'static str, PathBuf>),
}

/// Where containers' cgroups live: `<parent>` under each hierarchy (for v2,
/// under `v2_base`, the directory the socket hooks are attached to, so
/// containers stay covered by them).
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    parent: String,
    v2_base: PathBuf,
}

impl Cgroups {
    /// Finds the hierarchies from /proc/self/mountinfo.
    pub fn detect(parent: &str, v2_base: &Path) -> Result<Self, CgroupError> {
        if parent.is_empty()
            || parent
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(CgroupError::Invalid {
                flag: "--cgroup-parent",
                reason: format!("{parent:?} must be a relative path without . or .."),
            });
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
        let mut v1 = BTreeMap::new();
        let mut v2 = None;
        for line in mountinfo.lines() {
            // ... mount_point ... - fstype source super_options
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(mount_point), Some(fstype), Some(options)) =
                (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
            else {
                continue;
            };
            match *fstype {
                "cgroup2" => v2 = v2.or(Some(PathBuf::from(mount_point))),
                "cgroup" => {
                    for c in V1_CONTROLLERS {
                        if options.split(',').any(|o| o == c) {
                            v1.entry(c).or_insert_with(|| PathBuf::from(mount_point));
                        }
                    }
                }
                _ => {}
            }
        }
        let layout = match v2 {
            Some(root)
                if fs::read_to_string(root.join("cgroup.controllers")).is_ok_and(|c| {
                    V2_CONTROLLERS
                        .iter()
                        .all(|want| c.split_whitespace().any(|have| have == *want))
                }) =>
            {
                Layout::V2(root)
            }
            _ if ["memory", "cpu", "pids"].iter().all(|c| v1.contains_key(c)) => Layout::V1(v1),
            _ => {
                return Err(CgroupError::Unsupported(
                    "neither cgroup v2 with memory, cpu, cpuset and pids nor v1 memory, cpu \
                     and pids hierarchies are mounted here (`ip netns exec` mounts a new /sys \
                     without them: enter a network namespace with `nsenter --net=` instead)"
                        .into(),
                ));
            }
        };
        Ok(Self {
            layout,
            parent: parent.to_owned(),
            v2_base: v2_base.to_owned(),
        })
    }

    pub fn version(&self) -> u8 {
        match self.layout {
            Layout::V2(_) => 2,
            Layout::V1(_) => 1,
        }
    }

    /// The parent directory in each hierarchy, by controller (`""` for v2).
    fn parents(&self) -> Vec<(&'static str, PathBuf)> {
        match &self.layout {
            Layout::V2(_) => vec![("", self.v2_base.join(&self.parent))],
            Layout::V1(mounts) => mounts
                .iter()
                .map(|(c, m)| (*c, m.join(&self.parent)))
                .collect(),
        }
    }

    /// The container's directory in each hierarchy.
    pub fn dirs(&self, id: &str) -> Vec<PathBuf> {
        self.parents()
            .into_iter()
            .map(|(_, p)| p.join(id))
            .collect()
    }

    /// The `cgroup.procs` files the workload writes itself into.
    pub fn procs_files(&self, id: &str) -> Vec<PathBuf> {
        self.dirs(id)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn dir_of(&self, controller: &str, id: &str) -> Option<PathBuf> {
        self.parents()
            .into_iter()
            .find(|(c, _)| c.is_empty() || *c == controller)
            .map(|(_, p)| p.join(id))
    }

    /// Creates the container's cgroups with `res` applied. On failure,
    /// whatever was created is removed again.
    pub fn create(&self, id: &str, res: &Resources) -> Result<(), CgroupError> {
        res.validate()?;
        let result = self.prepare_parents().and_then(|()| {
            for dir in self.dirs(id) {
                fs::create_dir(&dir).map_err(io_err("create", &dir))?;
            }
            self.apply(id, res)
        });
        if result.is_err() {
            let _ = self.remove(id);
        }
        result
    }

    fn prepare_parents(&self) -> Result<(), CgroupError> {
        for (controller, parent) in self.parents() {
            fs::create_dir_all(&parent).map_err(io_err("create", &parent))?;
            match controller {
                // A new v1 cpuset directory starts with no CPUs and no memory
                // nodes, and no task may join it: inherit the root's.
                "cpuset" => {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        if read_trimmed(&parent.join(file)).is_empty() {
                            let mut from = parent.clone();
                            while read_trimmed(&from.join(file)).is_empty() && from.pop() {}
                            write(&parent.join(file), &read_trimmed(&from.join(file)))?;
                        }
                    }
                    write(&parent.join("cgroup.clone_children"), "1")?;
                }
                "" => {
                    // v2: every controller must be enabled on the way down.
                    let Layout::V2(root) = &self.layout else {
                        continue;
                    };
                    let mut chain: Vec<PathBuf> = parent
                        .ancestors()
                        .take_while(|p| p.starts_with(root))
                        .map(Path::to_path_buf)
                        .collect();
                    chain.reverse();
                    let enable = V2_CONTROLLERS
                        .iter()
                        .map(|c| format!("+{c}"))
                        .collect::<Vec<_>>()
                        .join(" ");
                    for dir in chain {
                        write(&dir.join("cgroup.subtree_control"), &enable)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn apply(&self, id: &str, res: &Resources) -> Result<(), CgroupError> {
        let set = |controller: &str, file: &str, value: &str| -> Result<(), CgroupError> {
            match self.dir_of(controller, id) {
                Some(dir) => write(&dir.join(file), value),
                None => Ok(()),
            }
        };
        let quota = (res.nano_cpus != 0).then(|| res.nano_cpus * CPU_PERIOD_US / 1_000_000_000);
        match &self.layout {
            Layout::V1(_) => {
                if res.memory != 0 {
                    set("memory", "memory.limit_in_bytes", &res.memory.to_string())?;
                    let memsw = self
                        .dir_of("memory", id)
                        .map(|d| d.join("memory.memsw.limit_in_bytes"));
                    if let (Some(limit), Some(file)) = (res.memory_and_swap(), memsw)
                        && file.exists()
                    {
                        write(&file, &limit.to_string())?;
                    }
                }
                if let Some(quota) = quota {
                    set("cpu", "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    set("cpu", "cpu.cfs_quota_us", &quota.to_string())?;
                }
                if res.cpu_shares != 0 {
                    set("cpu", "cpu.shares", &res.cpu_shares.to_string())?;
                }
            }
            Layout::V2(_) => {
                if res.memory != 0 {
                    set("memory", "memory.max", &res.memory.to_string())?;
                    let swap = match res.memory_and_swap() {
                        Some(total) => total.saturating_sub(res.memory).to_string(),
                        None => "max".to_owned(),
                    };
                    set("memory", "memory.swap.max", &swap)?;
                }
                if let Some(quota) = quota {
                    set("cpu", "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
                }
                if res.cpu_shares != 0 {
                    // The mapping runc uses from shares (2..262144) to weight (1..10000).
                    let weight = 1 + (res.cpu_shares - 2) * 9999 / 262_142;
                    set("cpu", "cpu.weight", &weight.to_string())?;
                }
            }
        }
        if !res.cpuset_cpus.is_empty() {
            set("cpuset", "cpuset.cpus", &res.cpuset_cpus).map_err(|e| match e {
                CgroupError::Io { source, .. } => CgroupError::Invalid {
                    flag: "--cpuset-cpus",
                    reason: format!("{:?} refused by the kernel: {source}", res.cpuset_cpus),
                },
                other => other,
            })?;
        }
        if res.pids_limit > 0 {
            set("pids", "pids.max", &res.pids_limit.to_string())?;
        }
        Ok(())
    }

    /// Reads the container's usage counters; missing files read as 0.
    pub fn usage(&self, id: &str) -> Usage {
        let file = |controller: &str, name: &str| -> String {
            self.dir_of(controller, id)
                .map(|d| read_trimmed(&d.join(name)))
                .unwrap_or_default()
        };
        let number = |s: String| s.parse::<u64>().unwrap_or(0);
        let memory_stat = file("memory", "memory.stat");
        let cpu_stat = file("cpu", "cpu.stat");
        match &self.layout {
            Layout::V1(_) => {
                let usage = number(file("memory", "memory.usage_in_bytes"));
                let limit = number(file("memory", "memory.limit_in_bytes"));
                Usage {
                    cpu_ns: number(file("cpuacct", "cpuacct.usage")),
                    nr_throttled: keyed(&cpu_stat, "nr_throttled"),
                    memory: usage.saturating_sub(keyed(&memory_stat, "total_inactive_file")),
                    // v1 shows "unlimited" as a page-rounded i64::MAX.
                    memory_limit: if limit >= 1 << 62 { 0 } else { limit },
                    pids: number(file("pids", "pids.current")),
                    oom_kills: keyed(&file("memory", "memory.oom_control"), "oom_kill"),
                }
            }
            Layout::V2(_) => Usage {
                cpu_ns: keyed(&cpu_stat, "usage_usec") * 1000,
                nr_throttled: keyed(&cpu_stat, "nr_throttled"),
                memory: number(file("memory", "memory.current"))
                    .saturating_sub(keyed(&memory_stat, "inactive_file")),
                memory_limit: number(file("memory", "memory.max")),
                pids: number(file("pids", "pids.current")),
                oom_kills: keyed(&file("memory", "memory.events"), "oom_kill"),
            },
        }
    }

    /// Removes the container's cgroups. Processes that were just killed may
    /// take a moment to leave, so a busy directory is retried for a while.
    /// Idempotent.
    pub fn remove(&self, id: &str) -> Result<(), CgroupError> {
        for dir in self.dirs(id) {
            let mut tries = 0;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(io_err("remove", &dir)(e)),
                }
            }
        }
        Ok(())
    }

    /// Container ids that have a directory below a parent, in any hierarchy.
    pub fn children(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .parents()
            .iter()
            .filter_map(|(_, p)| fs::read_dir(p).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// SIGKILLs every process in the container's cgroups (a workload
    /// whose ferryd died before it recorded the container); the pids.
    pub fn kill_all(&self, id: &str) -> Vec<u32> {
        let mut killed = Vec::new();
        for file in self.procs_files(id) {
            for pid in read_trimmed(&file)
                .lines()
                .filter_map(|l| l.parse::<u32>().ok())
            {
                if !killed.contains(&pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    killed.push(pid);
                }
            }
        }
        killed
    }

    /// Removes the (empty) parent directories, for `ferryd reset`.
    pub fn remove_parents(&self) -> Result<(), CgroupError> {
        for (_, parent) in self.parents() {
            match fs::remove_dir(&parent) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("remove", &parent)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

/// The value of `key` in a `key value` per line file.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_docker_does() {
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("512kb"), Ok(512 << 10));
        assert_eq!(parse_size("100b"), Ok(100));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12x").is_err());
        assert!(parse_size("m").is_err());
        assert!(parse_size("-1m").is_err());
    }

    #[test]
    fn limits_are_validated() {
        let ok = Resources {
            memory: 64 << 20,
            memory_swap: -1,
            nano_cpus: 500_000_000,
            cpuset_cpus: "0".into(),
            pids_limit: 10,
            ..Resources::default()
        };
        assert!(ok.validate().is_ok());
        for bad in [
            Resources {
                memory: 1 << 20,
                ..Resources::default()
            },
            Resources {
                memory: 64 << 20,
                memory_swap: 32 << 20,
                ..Resources::default()
            },
            Resources {
                memory_swap: 64 << 20,
                ..Resources::default()
            },
            Resources {
                nano_cpus: 1_000_000_000_000,
                ..Resources::default()
            },
            Resources {
                cpuset_cpus: "0-".into(),
                ..Resources::default()
            },
            Resources {
                cpu_shares: 1,
                ..Resources::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn swap_defaults_to_twice_memory() {
        let r = |memory, memory_swap| Resources {
            memory,
            memory_swap,
            ..Resources::default()
        };
        assert_eq!(r(100, 0).memory_and_swap(), Some(200));
        assert_eq!(r(100, -1).memory_and_swap(), None);
        assert_eq!(r(100, 150).memory_and_swap(), Some(150));
        assert_eq!(r(0, 0).memory_and_swap(), None);
    }

    #[test]
    fn keyed_files_parse() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(text, "oom_kill"), 3);
        assert_eq!(keyed(text, "missing"), 0);
    }
}
