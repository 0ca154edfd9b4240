//! Checks of the free-form strings in API requests, done before anything
//! is created: what reaches `execve`, `sethostname` or a file in the
//! container's root must be something the kernel and the files take as
//! meant, or the request is refused with the reason.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("{what} {value:?} contains a NUL byte")]
    Nul { what: &'static str, value: String },
    #[error(
        "invalid hostname {0:?}: up to 63 characters of [a-zA-Z0-9.-], starting with a letter or digit"
    )]
    Hostname(String),
    #[error("invalid environment entry {0:?}: expected KEY=VALUE with a non-empty KEY")]
    Env(String),
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
            assert_eq!(hostname(ok), Ok(()), "{ok}");
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
        assert_eq!(env(&ok), Ok(()));
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
    fn byte_sizes() {
        assert_eq!(Bytes(1 << 20).to_string(), "1.0 MiB");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(12).to_string(), "12 B");
    }
}
