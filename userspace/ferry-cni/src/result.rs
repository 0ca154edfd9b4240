//! What the plugin answers, in the shape of the configuration's CNI
//! version: results, version lists and errors.

use ferry_api::endpoint::EndpointJson;
use serde_json::{Value, json};

use crate::{CniError, SUPPORTED, code, conf::NetConf};

/// VERSION's answer.
pub fn version(cni_version: &str) -> String {
    json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED }).to_string()
}

/// An error, as the spec wants it on stdout.
pub fn error(cni_version: &str, e: &CniError) -> String {
    json!({
        "cniVersion": cni_version,
        "code": e.code,
        "msg": e.msg,
        "details": e.details,
    })
    .to_string()
}

/// Versions before 1.0.0 say which IP version each address is.
fn pre_1_0(cni_version: &str) -> bool {
    cni_version.starts_with("0.")
}

/// ADD's result: the host-side veth and the namespace's interface, its
/// /32 address with the link-local gateway, and the default route. A
/// previous plugin's result (a chain) keeps its entries, ours follow.
pub fn add(conf: &NetConf, ep: &EndpointJson) -> Result<String, CniError> {
    let mut result = match &conf.prev_result {
        Some(prev) => prev.clone(),
        None => json!({}),
    };
    let Some(object) = result.as_object_mut() else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "prevResult is not an object",
        ));
    };
    object.insert("cniVersion".into(), json!(conf.cni_version));
    let list = |object: &mut serde_json::Map<String, Value>, key: &str| -> usize {
        let entry = object.entry(key).or_insert_with(|| json!([]));
        if !entry.is_array() {
            *entry = json!([]);
        }
        entry.as_array().map_or(0, Vec::len)
    };
    let first = list(object, "interfaces");
    list(object, "ips");
    list(object, "routes");
    let push = |object: &mut serde_json::Map<String, Value>, key: &str, value: Value| {
        if let Some(Value::Array(items)) = object.get_mut(key) {
            items.push(value);
        }
    };
    push(
        object,
        "interfaces",
        json!({ "name": ep.host_ifname, "mac": ep.host_mac }),
    );
    push(
        object,
        "interfaces",
        json!({ "name": ep.ifname, "mac": ep.mac, "sandbox": ep.netns }),
    );
    let mut ip = json!({
        "address": format!("{}/32", ep.ip),
        "gateway": ep.gateway.to_string(),
        "interface": first + 1,
    });
    if pre_1_0(&conf.cni_version)
        && let Some(ip) = ip.as_object_mut()
    {
        ip.insert("version".into(), json!("4"));
    }
    push(object, "ips", ip);
    push(
        object,
        "routes",
        json!({ "dst": "0.0.0.0/0", "gw": ep.gateway.to_string() }),
    );
    object.entry("dns").or_insert_with(|| json!({}));
    Ok(result.to_string())
}

/// CHECK: ferryd's endpoint is whole (checked by ferryd) and is the one the
/// runtime recorded (its address in prevResult).
pub fn check(conf: &NetConf, ep: &EndpointJson) -> Result<(), CniError> {
    let Some(prev) = &conf.prev_result else {
        return Ok(());
    };
    let want = format!("{}/32", ep.ip);
    let recorded = prev
        .get("ips")
        .and_then(Value::as_array)
        .is_some_and(|ips| ips.iter().any(|i| i.get("address") == Some(&json!(want))));
    if recorded {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "prevResult does not hold the endpoint's address {want}: the attachment changed"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn endpoint() -> EndpointJson {
        EndpointJson {
            id: "0123456789abcdef".into(),
            kind: "cni".into(),
            key: "web/c/eth0".into(),
            name: "c".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            network: "bridge".into(),
            ip: Ipv4Addr::new(10, 88, 0, 2),
            mac: "02:42:0a:58:00:02".into(),
            gateway: ferry_api::endpoint::GATEWAY,
            subnet: "10.88.0.0/16".into(),
            host_ifname: "fy0123456789ab".into(),
            host_mac: "02:fe:0a:58:00:02".into(),
            ports: vec![],
            created: 1,
        }
    }

    fn conf(version: &str, prev: Option<Value>) -> NetConf {
        serde_json::from_value(json!({
            "cniVersion": version, "name": "web", "prevResult": prev,
        }))
        .expect("conf")
    }

    #[test]
    fn add_points_the_address_at_the_sandboxed_interface() {
        let out: Value =
            serde_json::from_str(&add(&conf("1.0.0", None), &endpoint()).expect("add"))
                .expect("json");
        assert_eq!(out["interfaces"][1]["sandbox"], "/run/netns/x");
        assert_eq!(out["ips"][0]["interface"], 1);
        assert_eq!(out["ips"][0]["address"], "10.88.0.2/32");
        assert_eq!(out["ips"][0]["gateway"], "169.254.1.1");
        assert!(out["ips"][0].get("version").is_none());
        let old: Value =
            serde_json::from_str(&add(&conf("0.4.0", None), &endpoint()).expect("add"))
                .expect("json");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["cniVersion"], "0.4.0");
    }

    #[test]
    fn a_chain_keeps_the_previous_result() {
        let prev = json!({"cniVersion":"1.0.0","interfaces":[{"name":"lo0"}],"ips":[],"dns":{"nameservers":["10.0.0.1"]}});
        let out: Value =
            serde_json::from_str(&add(&conf("1.0.0", Some(prev)), &endpoint()).expect("add"))
                .expect("json");
        assert_eq!(out["interfaces"].as_array().map(Vec::len), Some(3));
        assert_eq!(out["ips"][0]["interface"], 2);
        assert_eq!(out["dns"]["nameservers"][0], "10.0.0.1");
    }

    #[test]
    fn check_compares_with_the_recorded_address() {
        let ep = endpoint();
        let good = add(&conf("1.0.0", None), &ep).expect("add");
        let good: Value = serde_json::from_str(&good).expect("json");
        assert!(check(&conf("1.0.0", Some(good)), &ep).is_ok());
        let other = json!({"ips":[{"address":"10.88.0.9/32","interface":1}]});
        let err = check(&conf("1.0.0", Some(other)), &ep).expect_err("mismatch");
        assert!(err.msg.contains("10.88.0.2/32"), "{}", err.msg);
    }
}
