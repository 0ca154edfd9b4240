//! Properties of the parsers that take user input, as functions of raw
//! bytes that panic when one is broken: the cargo-fuzz targets
//! (tests/fuzz, `cargo xtask fuzz`) call them on generated input, and the
//! unit tests below on every seed and corpus input kept in tests/fuzz, so
//! an input that once broke a property stays a test.

use crate::{
    api::{ExecRequest, RunRequest},
    portmap::{HostPorts, PublishSpec},
    validate,
};

/// Any string as a `-p` spec: parsing never panics, and a spec that parses
/// prints in a spelling that parses back to the same spec.
pub fn publish_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = text.parse::<PublishSpec>() else {
        return;
    };
    let (lo, hi) = spec.container_ports;
    assert!(lo >= 1 && lo <= hi, "{text:?}: container ports {lo}-{hi}");
    if let HostPorts::Range(hlo, hhi) = spec.host_ports {
        assert!(hlo >= 1 && hlo <= hhi, "{text:?}: host ports {hlo}-{hhi}");
        assert!(lo == hi || hhi - hlo == hi - lo, "{text:?}: ranges differ");
    }
    let printed = spec.to_string();
    assert_eq!(
        printed.parse::<PublishSpec>().as_ref(),
        Ok(&spec),
        "{text:?} -> {printed:?}"
    );
}

/// Any bytes as the body of `POST /containers/run` and `.../exec`:
/// decoding and the request checks ferryd makes before touching the host
/// never panic, and a run request they accept has only strings the kernel
/// takes as meant.
pub fn api_request(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<RunRequest>(data)
        && let Ok(parts) = validate::run_request(&req)
    {
        assert!(!req.cmd.is_empty() && !req.cmd[0].is_empty());
        for s in req.cmd.iter().chain(&req.env).chain(&req.host_config.binds) {
            assert!(!s.contains('\0'), "NUL accepted in {s:?}");
        }
        assert!(
            req.env
                .iter()
                .all(|e| e.split_once('=').is_some_and(|(k, _)| !k.is_empty()))
        );
        assert!(parts.workdir.is_absolute());
        assert!(
            parts
                .binds
                .iter()
                .all(|b| b.source.is_absolute() && b.target.is_absolute())
        );
        assert_eq!(parts.specs.len(), req.publish.len());
    }
    if let Ok(req) = serde_json::from_slice::<ExecRequest>(data) {
        let _ = validate::exec_request(&req);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Every kept input of a fuzz target: its seeds and, where a fuzzing
    /// run left one, its corpus.
    fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz");
        let mut found = Vec::new();
        for kind in ["seeds", "corpus"] {
            let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
                continue;
            };
            for entry in dir.flatten() {
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    found.push((entry.path(), bytes));
                }
            }
        }
        found
    }

    #[test]
    fn every_kept_publish_spec_input_holds() {
        let inputs = inputs("publish_spec");
        assert!(!inputs.is_empty(), "no seeds for publish_spec");
        for (path, bytes) in inputs {
            eprintln!("{}", path.display());
            super::publish_spec(&bytes);
        }
    }

    #[test]
    fn every_kept_api_request_input_holds() {
        let inputs = inputs("api_request");
        assert!(!inputs.is_empty(), "no seeds for api_request");
        for (path, bytes) in inputs {
            eprintln!("{}", path.display());
            super::api_request(&bytes);
        }
    }
}
