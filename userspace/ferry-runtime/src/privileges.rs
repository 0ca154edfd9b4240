//! What a container's processes may do, and dropping to it before exec:
//! the user they run as, the capabilities they keep, the system calls they
//! may make (see `caps`, `user`, `seccomp`).

use std::io;

use serde::{Deserialize, Serialize};

use crate::{caps, seccomp::Profile, user};

/// What a container's processes may do: who they run as, the capabilities
/// they keep, the system calls they may make.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Privileges {
    /// `--user` or the image's `User` (empty: root).
    #[serde(default)]
    pub user: String,
    /// The seccomp profile; `None`: unconfined.
    #[serde(default)]
    pub seccomp: Option<Profile>,
    /// The capabilities kept (numbers).
    #[serde(default = "default_caps")]
    pub caps: Vec<u32>,
}

impl Privileges {
    /// Drops to these privileges, the seccomp filter last: the calling
    /// process may only exec afterwards. Returns `env` with the user's
    /// `HOME`.
    pub(crate) fn apply(&self, env: &[String]) -> Result<Vec<String>, String> {
        let env = drop_privileges(&self.caps, &self.user, env)?;
        confine(self.seccomp.as_ref(), &self.caps)?;
        Ok(env)
    }
}

fn default_caps() -> Vec<u32> {
    caps::DEFAULT.to_vec()
}

/// Loads the seccomp profile: the last step before exec, so that nothing
/// ferry does itself is filtered.
fn confine(profile: Option<&Profile>, kept: &[u32]) -> Result<(), String> {
    let names: Vec<&str> = kept.iter().filter_map(|c| caps::name(*c)).collect();
    profile.map_or(Ok(()), |p| p.load(&names))
}

/// The container's privileges: the bounding set cut to `kept`, then the
/// user (groups, gid, uid: needs CAP_SETGID and CAP_SETUID, which `kept`
/// may lack, so before the other sets are cut), then, for root, exactly
/// `kept` in every set (leaving uid 0 has already cleared them for any
/// other user, as in Docker), and no_new_privs. Returns the environment
/// with the user's `HOME`.
fn drop_privileges(kept: &[u32], user: &str, env: &[String]) -> Result<Vec<String>, String> {
    for cap in 0..64u32 {
        if kept.contains(&cap) {
            continue;
        }
        // SAFETY: prctl(PR_CAPBSET_DROP) only changes this process's state.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } < 0 {
            match io::Error::last_os_error().raw_os_error() {
                // Past the kernel's last capability.
                Some(libc::EINVAL) => break,
                _ => {
                    return Err(format!(
                        "dropping capability {cap}: {}",
                        io::Error::last_os_error()
                    ));
                }
            }
        }
    }
    let ids = user::resolve(user)?;
    user::switch(&ids)?;
    if ids.uid == 0 {
        set_capabilities(kept)?;
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) only changes this process's state.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(format!("no_new_privs: {}", io::Error::last_os_error()));
    }
    Ok(user::with_home(env, &ids))
}

/// Exactly `kept` in the effective, permitted and inheritable sets, less
/// what ferryd itself does not hold (`--privileged` on a host whose
/// bounding set lacks some: a process can only keep what it has).
fn set_capabilities(kept: &[u32]) -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let half = |bits: u32| Data {
        effective: bits,
        permitted: bits,
        inheritable: bits,
    };
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut current = [half(0), half(0)];
    // SAFETY: capget writes one header and two data structs, laid out as
    // for capset.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, current.as_mut_ptr()) } < 0 {
        return Err(format!("capget: {}", io::Error::last_os_error()));
    }
    let held = u64::from(current[0].permitted) | u64::from(current[1].permitted) << 32;
    let mask: u64 = kept.iter().fold(0, |m, c| m | 1 << c) & held;
    let data = [half(mask as u32), half((mask >> 32) as u32)];
    // SAFETY: capset reads one header and two data structs, laid out as
    // linux/capability.h defines them for version 3.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } < 0 {
        return Err(format!("capset: {}", io::Error::last_os_error()));
    }
    Ok(())
}
