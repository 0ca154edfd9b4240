//! What the runtime asks: the `CNI_*` variables and the network
//! configuration on stdin, checked into a [`Request`].

use std::{net::Ipv4Addr, path::PathBuf};

use ferry_api::endpoint::PortMap;
use serde::Deserialize;
use serde_json::Value;

use crate::{CniError, SUPPORTED, code};

/// ferryd's API socket unless the configuration names another.
pub const DEFAULT_SOCKET: &str = "/run/ferry/ferry.sock";
/// ferry's network unless the configuration names another.
pub const DEFAULT_NETWORK: &str = "bridge";

/// The network configuration, as far as ferry reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    /// The CNI network's name.
    pub name: String,
    /// The ferry network to attach to.
    #[serde(default = "default_network")]
    pub network: String,
    /// ferryd's API socket.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments the runtime still knows.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Vec<Attachment>,
}

fn default_network() -> String {
    DEFAULT_NETWORK.to_owned()
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

/// The capabilities' arguments (`portMappings`, `ips`, `mac`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub mac: Option<String>,
}

/// One entry of `portMappings`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// What ADD asks for beyond the attachment's identity.
#[derive(Debug, Clone, Default)]
pub struct Add {
    pub netns: String,
    /// The runtime's name for the container (`K8S_POD_NAME`), else a short ID.
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<String>,
    pub ports: Vec<PortMap>,
}

#[derive(Debug, Clone)]
pub enum Command {
    Add(Add),
    Check,
    Del,
    /// The attachments to keep: (container ID, ifname).
    Gc(Vec<(String, String)>),
    Status,
    Version,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    pub conf: NetConf,
    pub container_id: String,
    pub ifname: String,
}

impl Request {
    /// Reads the request from stdin's bytes and the environment (`env`
    /// answers one variable).
    pub fn parse(stdin: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let required = |name: &str| {
            var(name).ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{name} is not set")))
        };
        let command = required("CNI_COMMAND")?;
        if command == "VERSION" {
            return Ok(Self {
                command: Command::Version,
                conf: NetConf {
                    cni_version: version_of(stdin),
                    name: String::new(),
                    network: default_network(),
                    socket: default_socket(),
                    runtime_config: RuntimeConfig::default(),
                    prev_result: None,
                    valid_attachments: Vec::new(),
                },
                container_id: String::new(),
                ifname: String::new(),
            });
        }
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("cannot decode the network configuration: {e}"),
            )
        })?;
        if !SUPPORTED.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "CNI version {} is not supported (ferry-cni speaks {})",
                    conf.cni_version,
                    SUPPORTED.join(", ")
                ),
            ));
        }
        if conf.name.is_empty() || conf.name.contains('/') {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("invalid network name {:?}", conf.name),
            ));
        }
        let (container_id, ifname) = match command.as_str() {
            "ADD" | "CHECK" | "DEL" => (required("CNI_CONTAINERID")?, required("CNI_IFNAME")?),
            _ => (String::new(), String::new()),
        };
        let command = match command.as_str() {
            "ADD" => Command::Add(add(&conf, &container_id, required("CNI_NETNS")?, &env)?),
            "CHECK" => {
                required("CNI_NETNS")?;
                Command::Check
            }
            // CNI_NETNS may be empty: the namespace can be gone already.
            "DEL" => Command::Del,
            "GC" => Command::Gc(
                conf.valid_attachments
                    .iter()
                    .map(|a| (a.container_id.clone(), a.ifname.clone()))
                    .collect(),
            ),
            "STATUS" => Command::Status,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("unknown CNI_COMMAND {other:?}"),
                ));
            }
        };
        Ok(Self {
            command,
            conf,
            container_id,
            ifname,
        })
    }

    /// The attachment's key in ferryd: network name, container ID, ifname.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.conf.name, self.container_id, self.ifname)
    }
}

/// ADD's arguments: runtimeConfig first, then `CNI_ARGS` (`IP=`, `MAC=`,
/// `K8S_POD_NAME=`).
fn add(
    conf: &NetConf,
    container_id: &str,
    netns: String,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Add, CniError> {
    let args: Vec<(String, String)> = env("CNI_ARGS")
        .unwrap_or_default()
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let arg = |name: &str| {
        args.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let rc = &conf.runtime_config;
    let ip_text = rc
        .ips
        .first()
        .map(|ip| ip.split('/').next().unwrap_or_default().to_owned())
        .or_else(|| arg("IP"));
    let ip = match ip_text {
        None => None,
        Some(text) => Some(text.parse::<Ipv4Addr>().map_err(|_| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("invalid IPv4 address {text:?} (ferry's networks are IPv4)"),
            )
        })?),
    };
    let mut ports = Vec::new();
    for p in &rc.port_mappings {
        let host_ip = match p.host_ip.as_str() {
            "" => None,
            text => Some(text.parse::<Ipv4Addr>().map_err(|_| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("invalid hostIP {text:?} for port {}", p.host_port),
                )
            })?),
        };
        ports.push(PortMap {
            host_ip,
            host_port: p.host_port,
            container_port: p.container_port,
            proto: p.protocol.to_ascii_lowercase(),
        });
    }
    let short: String = container_id.chars().take(12).collect();
    Ok(Add {
        netns,
        name: arg("K8S_POD_NAME").unwrap_or(short),
        ip,
        mac: rc.mac.clone().or_else(|| arg("MAC")),
        ports,
    })
}

/// The `cniVersion` of a configuration that may not parse, for the error
/// answer; the newest supported one when there is none.
pub fn version_of(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| SUPPORTED[SUPPORTED.len() - 1].to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(stdin: &str, env: &[(&str, &str)]) -> Result<Request, CniError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Request::parse(stdin.as_bytes(), |k| env.get(k).cloned())
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"web","type":"ferry-cni",
        "capabilities":{"portMappings":true,"ips":true},
        "runtimeConfig":{"portMappings":[{"hostPort":18081,"containerPort":80,"protocol":"tcp"},
        {"hostPort":18082,"containerPort":80,"protocol":"udp","hostIP":"127.0.0.1"}]}}"#;

    #[test]
    fn add_reads_podmans_request() {
        let r = parse(
            CONF,
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "b32402ca97ef248c9d2e"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", "eth0"),
                (
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAME=pc-web2;IP=10.88.0.50",
                ),
            ],
        )
        .expect("valid");
        assert_eq!(r.key(), "web/b32402ca97ef248c9d2e/eth0");
        assert_eq!(r.conf.network, "bridge");
        let Command::Add(add) = r.command else {
            panic!("not an ADD");
        };
        assert_eq!(add.name, "pc-web2");
        assert_eq!(add.ip, Some(Ipv4Addr::new(10, 88, 0, 50)));
        assert_eq!(add.ports.len(), 2);
        assert_eq!(add.ports[1].host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(add.ports[1].proto, "udp");
    }

    #[test]
    fn del_needs_no_namespace_and_gc_reads_the_attachments() {
        let del = parse(
            CONF,
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", ""),
            ],
        )
        .expect("DEL");
        assert!(matches!(del.command, Command::Del));
        let gc = parse(
            r#"{"cniVersion":"1.1.0","name":"web","type":"ferry-cni",
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
            &[("CNI_COMMAND", "GC")],
        )
        .expect("GC");
        let Command::Gc(keep) = gc.command else {
            panic!("not a GC");
        };
        assert_eq!(keep, vec![("c1".to_owned(), "eth0".to_owned())]);
    }

    #[test]
    fn bad_requests_name_the_problem() {
        for (stdin, env, want_code, says) in [
            (CONF, vec![], code::INVALID_ENV, "CNI_COMMAND"),
            (
                CONF,
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_IFNAME", "eth0"),
                ],
                code::INVALID_ENV,
                "CNI_NETNS",
            ),
            ("{", vec![("CNI_COMMAND", "ADD")], code::DECODE, "decode"),
            (
                r#"{"cniVersion":"0.2.0","name":"n"}"#,
                vec![("CNI_COMMAND", "STATUS")],
                code::INCOMPATIBLE_VERSION,
                "0.2.0",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["fd00::2/64"]}}"#,
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/run/netns/x"),
                ],
                code::INVALID_CONFIG,
                "fd00::2",
            ),
            (
                CONF,
                vec![("CNI_COMMAND", "FROB")],
                code::INVALID_ENV,
                "FROB",
            ),
        ] {
            let err = parse(stdin, &env).expect_err(says);
            assert_eq!(err.code, want_code, "{says}: {}", err.msg);
            assert!(err.msg.contains(says), "{says} missing from {}", err.msg);
        }
    }
}
