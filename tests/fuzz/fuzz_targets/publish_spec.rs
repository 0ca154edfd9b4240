//! Any string as a `-p` spec: parsing never panics, and a spec that parses
//! prints in a spelling that parses back to the same spec.

#![no_main]

use ferry::portmap::{HostPorts, PublishSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
