//! Checks of the free-form strings in API requests, done before anything
//! is created: what reaches `execve`, `sethostname` or a file in the
//! container's root must be something the kernel and the files take as
//! meant, or the request is refused with the reason.

use std::{fmt, path::PathBuf};

use crate::{
    api::{ExecRequest, RunRequest},
    cgroup::CgroupError,
    portmap::{PublishSpec, SpecError},
    rootfs::{Bind, VolumeError},
};

#[derive(Debug, thiserror::Error)]
pub enum InvalidInput {
    #[error("{what} {value:?} contains a NUL byte")]
    Nul { what: &'static str, value: String },
    #[error(
        "invalid hostname {0:?}: up to 63 characters of [a-zA-Z0-9.-], starting with a letter or digit"
    )]
    Hostname(String),
    #[error("invalid environment entry {0:?}: expected KEY=VALUE with a non-empty KEY")]
    Env(String),
    #[error("no command given: {0}")]
    NoCommand(&'static str),
    #[error("invalid container name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    Name(String),
    #[error("the working directory {0:?} is invalid: it needs to be an absolute path")]
    WorkingDir(String),
    #[error(transparent)]
    Publish(#[from] SpecError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Resources(#[from] CgroupError),
    #[error("invalid --dns {0:?}: expected an IPv4 address")]
    Dns(String),
    #[error("invalid --add-host {0:?}: expected NAME:IPv4")]
    ExtraHost(String),
}

/// What a run request says, parsed: publish specs, binds (their host side
/// not yet looked at) and the working directory.
#[derive(Debug)]
pub struct RunParts {
    pub specs: Vec<PublishSpec>,
    pub binds: Vec<Bind>,
    pub workdir: PathBuf,
}

/// Every check of a run request that needs nothing but the request; the
/// daemon makes them first, then looks at the host (paths, names in use,
/// the network to join).
pub fn run_request(req: &RunRequest) -> Result<RunParts, InvalidInput> {
    if req.cmd.first().is_none_or(String::is_empty) {
        return Err(InvalidInput::NoCommand(
            "ferry run [OPTIONS] IMAGE [ARGS...], or ferry run [OPTIONS] -- CMD [ARGS...]",
        ));
    }
    no_nul("argument", &req.cmd)?;
    no_nul("working directory", [&req.working_dir])?;
    no_nul("volume", &req.host_config.binds)?;
    no_nul("rootfs", [&req.host_config.rootfs])?;
    env(&req.env)?;
    if let Some(h) = &req.hostname {
        hostname(h)?;
    }
    if let Some(n) = &req.name {
        name(n)?;
    }
    let specs = req
        .publish
        .iter()
        .map(|p| p.parse::<PublishSpec>())
        .collect::<Result<Vec<_>, _>>()?;
    let binds = req
        .host_config
        .binds
        .iter()
        .map(|b| b.parse::<Bind>())
        .collect::<Result<Vec<_>, _>>()?;
    req.host_config.resources.validate()?;
    for d in &req.host_config.dns {
        d.parse::<std::net::Ipv4Addr>()
            .map_err(|_| InvalidInput::Dns(d.clone()))?;
    }
    for h in &req.host_config.extra_hosts {
        extra_host(h)?;
    }
    Ok(RunParts {
        specs,
        binds,
        workdir: working_dir(&req.working_dir)?,
    })
}

/// The checks of an exec request; like [`run_request`].
pub fn exec_request(req: &ExecRequest) -> Result<(), InvalidInput> {
    if req.cmd.first().is_none_or(String::is_empty) {
        return Err(InvalidInput::NoCommand(
            "ferry exec [OPTIONS] CONTAINER CMD [ARGS...]",
        ));
    }
    no_nul("argument", &req.cmd)?;
    no_nul("working directory", [&req.working_dir])?;
    env(&req.env)
}

/// An `--add-host NAME:IP` entry, split.
pub fn extra_host(entry: &str) -> Result<(&str, std::net::Ipv4Addr), InvalidInput> {
    let bad = || InvalidInput::ExtraHost(entry.to_owned());
    let (name, ip) = entry.split_once(':').ok_or_else(bad)?;
    hostname(name).map_err(|_| bad())?;
    Ok((name, ip.parse().map_err(|_| bad())?))
}

/// Docker's rule for container names.
pub fn name(name: &str) -> Result<(), InvalidInput> {
    if ferry_net::network::valid_name(name) {
        Ok(())
    } else {
        Err(InvalidInput::Name(name.to_owned()))
    }
}

/// A working directory: empty (the default, `/`) or absolute.
fn working_dir(dir: &str) -> Result<PathBuf, InvalidInput> {
    match dir {
        "" => Ok(PathBuf::from("/")),
        d if d.starts_with('/') => Ok(PathBuf::from(d)),
        d => Err(InvalidInput::WorkingDir(d.to_owned())),
    }
}

/// Refuses NUL bytes: `execve` and every path the kernel reads end a string
/// there, so the rest would be silently cut off.
pub fn no_nul<'a>(
    what: &'static str,
    values: impl IntoIterator<Item = &'a String>,
) -> Result<(), InvalidInput> {
    match values.into_iter().find(|v| v.contains('\0')) {
        Some(v) => Err(InvalidInput::Nul {
            what,
            value: v.clone(),
        }),
        None => Ok(()),
    }
}

/// A hostname the kernel takes (at most 64 bytes) that also reads as one
/// line in /etc/hosts and /etc/hostname.
pub fn hostname(name: &str) -> Result<(), InvalidInput> {
    let mut chars = name.chars();
    let ok = name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::Hostname(name.to_owned()))
    }
}

/// Environment entries as `execve` takes them: `KEY=VALUE`, no NUL. (The
/// CLI resolves a bare `-e KEY` from its own environment, as Docker's does.)
pub fn env<'a>(entries: impl IntoIterator<Item = &'a String>) -> Result<(), InvalidInput> {
    for entry in entries {
        no_nul("environment entry", [entry])?;
        match entry.split_once('=') {
            Some((key, _)) if !key.is_empty() => {}
            _ => return Err(InvalidInput::Env(entry.clone())),
        }
    }
    Ok(())
}

/// A length for messages: `1.0 MiB`.
pub struct Bytes(pub usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n >= 1 << 20 => write!(f, "{:.1} MiB", n as f64 / f64::from(1 << 20)),
            n if n >= 1 << 10 => write!(f, "{:.1} KiB", n as f64 / f64::from(1 << 10)),
            n => write!(f, "{n} B"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["web", "web-1.example", "a", "0abc", &"x".repeat(63)] {
            assert!(hostname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-web",
            "web\nevil",
            "a b",
            "web/1",
            &"x".repeat(64),
            "wéb",
        ] {
            assert!(hostname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn environment_entries() {
        let ok: Vec<String> = ["A=1", "A=", "PATH=/bin:/usr/bin", "X==y"]
            .map(String::from)
            .into();
        assert!(env(&ok).is_ok());
        for bad in ["A", "=1", "", "A=1\0B=2"] {
            assert!(env(&[bad.to_owned()]).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn nul_bytes_are_named() {
        let args = vec!["sh".to_owned(), "-c\0x".to_owned()];
        let err = no_nul("argument", &args).expect_err("NUL accepted");
        assert_eq!(err.to_string(), "argument \"-c\\0x\" contains a NUL byte");
    }

    #[test]
    fn run_requests_are_checked_before_the_host_is_looked_at() {
        let req = |json: &str| -> RunRequest { serde_json::from_str(json).expect("request") };
        let parts = run_request(&req(
            r#"{"Cmd": ["sh"], "Publish": ["8080:80"], "HostConfig": {"Binds": ["/a:/b:ro"]}}"#,
        ))
        .expect("a good request");
        assert_eq!((parts.specs.len(), parts.binds.len()), (1, 1));
        assert_eq!(parts.workdir, PathBuf::from("/"));
        for (json, says) in [
            (r#"{"Cmd": []}"#, "no command given"),
            (r#"{"Cmd": ["sh"], "Name": "-x"}"#, "invalid container name"),
            (
                r#"{"Cmd": ["sh"], "Publish": ["80:80/sctp"]}"#,
                "invalid publish spec",
            ),
            (
                r#"{"Cmd": ["sh"], "HostConfig": {"Binds": ["/a:/"]}}"#,
                "invalid volume",
            ),
            (r#"{"Cmd": ["sh"], "WorkingDir": "rel"}"#, "absolute path"),
            (r#"{"Cmd": ["sh"], "HostConfig": {"Memory": 1}}"#, "6MB"),
        ] {
            let err = run_request(&req(json)).expect_err(json).to_string();
            assert!(err.contains(says), "{json}: {err}");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(Bytes(1 << 20).to_string(), "1.0 MiB");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(12).to_string(), "12 B");
    }
}
