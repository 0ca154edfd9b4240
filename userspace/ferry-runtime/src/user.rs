//! `--user` and an image's `User`: `name`, `uid`, `name:group`, `uid:gid`,
//! resolved against the container's own /etc/passwd and /etc/group, as
//! Docker resolves them.

use std::{ffi::CString, fs};

use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};

/// Who the workload runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (including `gid`).
    pub groups: Vec<u32>,
    pub home: String,
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Passwd {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map_or("/", |h| h).to_owned(),
            })
        })
        .collect()
}

/// (name, gid, members)
fn groups(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            ))
        })
        .collect()
}

/// Resolves `spec` with the given passwd and group files' contents.
pub fn resolve_in(spec: &str, passwd_text: &str, group_text: &str) -> Result<Ids, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = passwd(passwd_text);
    let all_groups = groups(group_text);
    let entry = if user.is_empty() {
        users.iter().find(|p| p.uid == 0)
    } else if let Ok(uid) = user.parse::<u32>() {
        users.iter().find(|p| p.uid == uid)
    } else {
        Some(users.iter().find(|p| p.name == user).ok_or_else(|| {
            format!("unable to find user {user}: no matching entries in passwd file")
        })?)
    };
    let uid = match (entry, user.parse::<u32>()) {
        (_, Ok(uid)) => uid,
        (Some(p), _) => p.uid,
        (None, _) => 0,
    };
    let gid = match group {
        None => entry.map_or(0, |p| p.gid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => all_groups
                .iter()
                .find(|(name, _, _)| name == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        },
    };
    let mut supplementary = vec![gid];
    if let (Some(p), None) = (entry, group) {
        for (_, g, members) in &all_groups {
            if members.contains(&p.name) && !supplementary.contains(g) {
                supplementary.push(*g);
            }
        }
    }
    Ok(Ids {
        uid,
        gid,
        groups: supplementary,
        home: entry.map_or_else(|| "/".to_owned(), |p| p.home.clone()),
    })
}

/// Resolves `spec` in the current root (the container's, after pivot_root).
pub fn resolve(spec: &str) -> Result<Ids, String> {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    resolve_in(spec, &read("/etc/passwd"), &read("/etc/group"))
}

/// Becomes `ids`. Run after the capabilities are set: leaving uid 0 clears
/// them, as for any non-root process.
pub fn switch(ids: &Ids) -> Result<(), String> {
    let groups: Vec<Gid> = ids.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    setgid(Gid::from_raw(ids.gid)).map_err(|e| format!("setgid {}: {e}", ids.gid))?;
    setuid(Uid::from_raw(ids.uid)).map_err(|e| format!("setuid {}: {e}", ids.uid))
}

/// Adds `HOME` when the environment has none.
pub fn with_home(env: &[String], ids: &Ids) -> Vec<String> {
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", ids.home));
    }
    // Checked here so that exec does not fail on it later.
    env.retain(|e| CString::new(e.as_str()).is_ok());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nlog:x:4:www,other\n";

    #[test]
    fn users_resolve_as_docker_resolves_them() {
        let r = |s: &str| resolve_in(s, PASSWD, GROUP);
        let www = r("www").expect("www");
        assert_eq!(
            (www.uid, www.gid, www.groups.clone()),
            (33, 33, vec![33, 4])
        );
        assert_eq!(www.home, "/var/www");
        assert_eq!(r("33").expect("33"), www);
        let root = r("").expect("root");
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let numeric = r("1000:1000").expect("numeric");
        assert_eq!(
            (numeric.uid, numeric.gid, numeric.home.as_str()),
            (1000, 1000, "/")
        );
        let grouped = r("www:log").expect("www:log");
        assert_eq!((grouped.uid, grouped.gid, grouped.groups), (33, 4, vec![4]));
        assert!(
            r("nobody")
                .expect_err("refused")
                .contains("unable to find user nobody")
        );
        assert!(
            r("www:nogroup")
                .expect_err("refused")
                .contains("unable to find group nogroup")
        );
    }
}
