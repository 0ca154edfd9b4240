//! `ferryd --userns-remap default`: root in a container is an unprivileged
//! range of host ids, with the image's layers idmapped rather than copied.
//! The test creates the `ferryremap` user and its ranges the way a user's
//! first start does, and removes them afterwards if they were not there.

use std::{os::unix::fs::MetadataExt as _, path::Path};

use ferry_integration::{
    HOST_UPLINK_IP, World,
    image::{self, Layer},
};
use serde_json::json;

/// Removes what `--userns-remap default` added, if the test added it.
struct RemapUser {
    created: bool,
}

impl RemapUser {
    fn observe() -> Self {
        let known = std::fs::read_to_string("/etc/passwd")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("ferryremap:"));
        Self { created: !known }
    }
}

impl Drop for RemapUser {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        let _ = std::process::Command::new("userdel")
            .arg("ferryremap")
            .status();
        for file in ["/etc/subuid", "/etc/subgid"] {
            if let Ok(text) = std::fs::read_to_string(file) {
                let kept: String = text
                    .lines()
                    .filter(|l| !l.starts_with("ferryremap:"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                let _ = std::fs::write(file, kept);
            }
        }
    }
}

fn range_start(file: &str) -> u32 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut parts = l.split(':');
            (parts.next() == Some("ferryremap")).then(|| parts.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no ferryremap range in {file}"))
}

#[test]
fn root_in_a_remapped_container_owns_nothing_on_the_host() {
    let _user = RemapUser::observe();
    let world = World::with_ferryd_args(&["--userns-remap", "default"]);
    let (uid, gid) = (range_start("/etc/subuid"), range_start("/etc/subgid"));
    assert!(uid >= 100_000 && gid >= 100_000, "{uid} {gid}");

    let layers = vec![
        Layer::new()
            .busybox(&["sh", "id", "cat", "ls", "echo", "sleep", "httpd"])
            .finish(),
    ];
    let config = image::config(&layers, json!({ "Cmd": ["sh"], "Env": ["PATH=/bin"] }));
    let archive = world.dir.join("remap.tar");
    image::docker_archive(&archive, &["remap:1"], &layers, &config);
    world.ferry_ok(&["load", "-q", "-i", &archive.display().to_string()]);

    // A host directory of root's, bound in.
    let shared = world.dir.join("shared");
    std::fs::create_dir_all(&shared).expect("shared dir");
    let bind = format!("{}:/data", shared.display());
    world.ferry_ok(&[
        "run", "-d", "--name", "remapped", "-v", &bind, "-p", "8080:80", "remap:1", "httpd", "-f",
        "-p", "80", "-h", "/www",
    ]);
    let inspect = world.inspect("remapped");
    let pid = inspect["State"]["Pid"].as_u64().expect("pid");
    let id = inspect["Id"].as_str().expect("id").to_owned();

    // Root inside, the range's first id outside.
    assert_eq!(world.ferry_ok(&["exec", "remapped", "id", "-u"]), "0\n");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    assert!(
        uids.split_whitespace().all(|u| u == uid.to_string()),
        "the workload runs as {uids} on the host"
    );
    assert_eq!(
        world
            .ferry_ok(&["exec", "remapped", "cat", "/proc/self/uid_map"])
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", &uid.to_string(), "65536"]
    );

    // What it writes in its root is the range's on the host.
    world.ferry_ok(&["exec", "remapped", "sh", "-c", "echo mine > /written"]);
    let written = world
        .dir
        .join("state/containers")
        .join(&id)
        .join("rootfs/upper/written");
    let meta = std::fs::metadata(&written).expect("the write is in the upper layer");
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));

    // The host's root-owned directory is not its to write.
    let denied = world.ferry(&["exec", "remapped", "sh", "-c", "echo x > /data/f"]);
    assert!(
        !denied.status.success(),
        "container root wrote to a host directory of root's"
    );
    assert!(std::fs::read_dir(&shared).expect("shared").next().is_none());

    // The image's files are root's inside and still root's on the host:
    // idmapped, not copied and chowned.
    let listing = world.ferry_ok(&["exec", "remapped", "ls", "-ln", "/bin/busybox"]);
    let fields: Vec<&str> = listing.split_whitespace().collect();
    assert_eq!(fields[2..4], ["0", "0"], "{listing}");
    let layer_dirs = world.dir.join("state/images/layers");
    let busybox = std::fs::read_dir(&layer_dirs)
        .expect("layers")
        .flatten()
        .map(|e| e.path().join("bin/busybox"))
        .find(|p| p.exists())
        .expect("the layer's busybox");
    assert_eq!(std::fs::metadata(&busybox).expect("busybox").uid(), 0);

    // Port 80, bound by an unprivileged host id, is published as usual.
    assert!(
        world
            .curl_eventually(&format!("http://{HOST_UPLINK_IP}:8080/"))
            .contains("hello from an image")
    );

    // Without an image: the host's root, idmapped too.
    let out = world.ferry_ok(&[
        "run",
        "--rm",
        "--",
        "sh",
        "-c",
        "id -u; stat -c %u /usr/bin",
    ]);
    assert_eq!(out, "0\n0\n");
    world.ferry_ok(&["rm", "-f", "remapped"]);
    assert!(!Path::new(&written).exists());
}
