//! Capabilities: Docker's default set, `--cap-add`, `--cap-drop`,
//! `--privileged`, by the names Docker and seccomp profiles use.

/// Every capability this kernel generation knows, by number.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's defaults: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID,
/// SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD,
/// AUDIT_WRITE, SETFCAP.
pub const DEFAULT: [u32; 14] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

/// Every capability (`--privileged`).
pub fn all() -> Vec<u32> {
    (0..NAMES.len() as u32).collect()
}

pub fn name(cap: u32) -> Option<&'static str> {
    NAMES.get(cap as usize).copied()
}

/// `NET_ADMIN`, `cap_net_admin` or `CAP_NET_ADMIN`.
fn parse(name: &str) -> Result<u32, String> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES
        .iter()
        .position(|n| *n == full)
        .map(|i| i as u32)
        .ok_or_else(|| format!("unknown capability {name:?}"))
}

/// The set a container gets, as Docker computes it: the default set (all
/// with `privileged` or `ALL` added, none with `ALL` dropped), plus what is
/// added, less what is dropped by name.
pub fn resolve(privileged: bool, add: &[String], drop: &[String]) -> Result<Vec<u32>, String> {
    let is_all = |v: &[String]| v.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let parse_all = |v: &[String]| -> Result<Vec<u32>, String> {
        v.iter()
            .filter(|c| !c.eq_ignore_ascii_case("ALL"))
            .map(|c| parse(c))
            .collect()
    };
    let (add_caps, drop_caps) = (parse_all(add)?, parse_all(drop)?);
    let drop_all = is_all(drop);
    let mut set: Vec<u32> = if privileged || is_all(add) {
        all()
    } else if drop_all {
        Vec::new()
    } else {
        DEFAULT.to_vec()
    };
    for c in add_caps {
        if !set.contains(&c) {
            set.push(c);
        }
    }
    // A named drop wins over an add of the same capability.
    if !drop_all {
        set.retain(|c| !drop_caps.contains(c));
    }
    set.sort_unstable();
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn sets_resolve_as_dockers_do() {
        assert_eq!(resolve(false, &[], &[]), Ok(DEFAULT.to_vec()));
        let no_raw = resolve(false, &[], &s(&["net_raw"])).expect("drop");
        assert!(!no_raw.contains(&13) && no_raw.len() == 13);
        let admin = resolve(false, &s(&["SYS_ADMIN"]), &[]).expect("add");
        assert!(admin.contains(&21) && admin.len() == 15);
        assert_eq!(
            resolve(false, &s(&["NET_BIND_SERVICE"]), &s(&["ALL"])),
            Ok(vec![10])
        );
        assert_eq!(resolve(true, &[], &[]), Ok(all()));
        assert_eq!(
            resolve(false, &s(&["ALL"]), &s(&["CAP_SYS_ADMIN"])).map(|v| v.contains(&21)),
            Ok(false)
        );
        assert!(
            resolve(false, &s(&["FLY"]), &[])
                .expect_err("refused")
                .contains("unknown capability \"FLY\"")
        );
    }
}
