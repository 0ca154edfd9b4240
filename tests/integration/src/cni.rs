//! A CNI runtime of the tests' own, as small as the spec allows: it runs
//! `ferry-cni` with the `CNI_*` variables and the network configuration on
//! stdin, keeps each ADD's result and hands it back as `prevResult` to
//! CHECK and DEL, as libcni does (podman, containerd).

use std::{
    collections::HashMap,
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use serde_json::{Value, json};

use crate::{World, bin_dir};

/// What one call of the plugin gave: its exit status and stdout (JSON, or
/// nothing).
#[derive(Debug, Clone)]
pub struct Answer {
    pub ok: bool,
    pub out: Value,
    pub stderr: String,
}

impl Answer {
    /// The result of a call that must have succeeded.
    pub fn ok(self) -> Value {
        assert!(self.ok, "ferry-cni failed: {} {}", self.out, self.stderr);
        self.out
    }

    /// The error of a call that must have failed: (code, msg).
    pub fn err(self) -> (u64, String) {
        assert!(!self.ok, "ferry-cni succeeded: {}", self.out);
        (
            self.out["code"].as_u64().unwrap_or(0),
            self.out["msg"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

pub struct Runtime {
    /// The plugin's configuration (what a conflist's entry holds).
    pub conf: Value,
    /// ADD results by (container ID, ifname).
    cache: HashMap<(String, String), Value>,
}

impl Runtime {
    /// A runtime for the CNI network `name`, attaching to ferry network
    /// `network` through the world's ferryd.
    pub fn new(world: &World, name: &str, network: &str) -> Self {
        Self {
            conf: json!({
                "cniVersion": "1.1.0",
                "name": name,
                "type": "ferry-cni",
                "network": network,
                "socket": world.socket,
                "capabilities": { "portMappings": true, "ips": true, "mac": true },
            }),
            cache: HashMap::new(),
        }
    }

    /// Runs the plugin once.
    pub fn exec(&self, env: &[(&str, &str)], stdin: &Value) -> Answer {
        let mut child = Command::new(bin_dir().join("ferry-cni"))
            .env("CNI_PATH", bin_dir())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ferry-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.to_string().as_bytes())
            .expect("write the configuration");
        let out = child.wait_with_output().expect("ferry-cni output");
        let text = String::from_utf8_lossy(&out.stdout);
        Answer {
            ok: out.status.success(),
            out: if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("ferry-cni printed no JSON ({e}): {text}"))
            },
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The configuration with `runtimeConfig` (and `prevResult`) added.
    fn stdin(&self, runtime_config: &Value, prev: Option<&Value>) -> Value {
        let mut conf = self.conf.clone();
        conf["runtimeConfig"] = runtime_config.clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    /// ADD of `id` in the namespace at `netns` (`args`: CNI_ARGS,
    /// `runtime_config`: e.g. portMappings); a success is cached.
    pub fn add(&mut self, id: &str, netns: &Path, args: &str, runtime_config: Value) -> Answer {
        let netns = netns.display().to_string();
        let answer = self.exec(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", args),
            ],
            &self.stdin(&runtime_config, None),
        );
        if answer.ok {
            self.cache
                .insert((id.to_owned(), "eth0".to_owned()), answer.out.clone());
        }
        answer
    }

    /// CHECK with the cached result.
    pub fn check(&self, id: &str, netns: &Path) -> Answer {
        let netns = netns.display().to_string();
        let prev = self.cache.get(&(id.to_owned(), "eth0".to_owned()));
        self.exec(
            &[
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
            ],
            &self.stdin(&json!({}), prev),
        )
    }

    /// DEL with the cached result; `netns` empty as containerd sends it
    /// once the namespace is gone.
    pub fn del(&mut self, id: &str, netns: &str) -> Answer {
        let prev = self.cache.remove(&(id.to_owned(), "eth0".to_owned()));
        self.exec(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
            ],
            &self.stdin(&json!({}), prev.as_ref()),
        )
    }

    /// GC keeping the attachments of `keep` (container IDs, eth0).
    pub fn gc(&mut self, keep: &[&str]) -> Answer {
        self.cache.retain(|(id, _), _| keep.contains(&id.as_str()));
        let mut conf = self.conf.clone();
        conf["cni.dev/valid-attachments"] = keep
            .iter()
            .map(|id| json!({ "containerID": id, "ifname": "eth0" }))
            .collect();
        self.exec(&[("CNI_COMMAND", "GC")], &conf)
    }

    pub fn status(&self) -> Answer {
        self.exec(&[("CNI_COMMAND", "STATUS")], &self.conf)
    }

    pub fn version(&self) -> Answer {
        self.exec(
            &[
                ("CNI_COMMAND", "VERSION"),
                ("CNI_NETNS", "dummy"),
                ("CNI_IFNAME", "dummy"),
                ("CNI_PATH", "dummy"),
            ],
            &json!({ "cniVersion": "1.0.0" }),
        )
    }
}
