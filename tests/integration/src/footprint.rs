//! A world's footprint: every kernel object and file its containers can
//! leave behind, compared before and after to find leaks.

use crate::*;

/// Every kernel object and file a world's containers can leave behind,
/// to compare before and after: equal footprints mean nothing leaked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// Interfaces in the host namespace.
    pub links: Vec<String>,
    /// Routes in the host namespace.
    pub routes: Vec<String>,
    /// Permanent neighbour entries in the host namespace.
    pub neighbours: Vec<String>,
    /// Entries of the maps that hold per-container or per-port state.
    pub map_entries: Vec<(String, u64)>,
    /// Container cgroup directories (below the per-hierarchy parents).
    pub cgroups: Vec<PathBuf>,
    /// Container state directories.
    pub state: Vec<String>,
    /// Stored endpoints of other engines.
    pub endpoints: Vec<String>,
    /// Mounts (seen from the host mount namespace) below the world's dir.
    pub mounts: Vec<String>,
    /// Files below the pin directory.
    pub pins: Vec<String>,
}

impl World {
    /// What exists now; see [`Footprint`].
    pub fn footprint(&self) -> Footprint {
        let names = |text: String| -> Vec<String> {
            let mut v: Vec<String> = text.lines().map(str::to_owned).collect();
            v.sort();
            v
        };
        let links = check(&mut self.in_host("ip", &["-o", "link", "show"]))
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
            .collect();
        let datapath = self.datapath();
        let map_entries = [
            "endpoints",
            "portmap",
            "port_stats",
            "sock_netns",
            "networks",
            "macvlan_parents",
        ]
        .iter()
        .map(|m| {
            let n = map_of(&datapath, m)["Entries"].as_u64().unwrap_or(u64::MAX);
            ((*m).to_owned(), n)
        })
        .collect();
        let mut cgroups = self.container_cgroups();
        cgroups.sort();
        let files = |dir: &str| {
            std::fs::read_dir(self.dir.join(dir))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        let state = files("state/containers");
        let dir = self.dir.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&dir))
            .map(str::to_owned)
            .collect();
        let pins = check(Command::new("find").arg(&self.pin_dir));
        Footprint {
            links,
            routes: names(check(&mut self.in_host("ip", &["route", "show"]))),
            neighbours: names(check(
                &mut self.in_host("ip", &["neigh", "show", "nud", "permanent"]),
            )),
            map_entries,
            cgroups,
            state: names(state.join("\n")),
            endpoints: names(files("state/endpoints").join("\n")),
            mounts,
            pins: names(pins),
        }
    }
}
