//! Any bytes as the body of `POST /containers/run` and `.../exec`: decoding
//! and the request checks ferryd makes before touching the host never
//! panic, and a run request they accept has only strings the kernel takes
//! as meant.

#![no_main]

use ferry::{
    api::{ExecRequest, RunRequest},
    validate,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
