//! What running an image takes from its configuration.

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

/// The parts of an image's config a container starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// `80/tcp`, as the image lists them.
    pub exposed_ports: Vec<String>,
    pub stop_signal: String,
}

impl RunConfig {
    pub(crate) fn of(config: &ImageConfiguration) -> Self {
        let Some(c) = config.config() else {
            return Self::default();
        };
        let list = |v: &Option<Vec<String>>| v.clone().unwrap_or_default();
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let mut exposed_ports = list(c.exposed_ports());
        exposed_ports.sort();
        Self {
            entrypoint: list(c.entrypoint()),
            cmd: list(c.cmd()),
            env: list(c.env()),
            working_dir: text(c.working_dir()),
            user: text(c.user()),
            exposed_ports,
            stop_signal: text(c.stop_signal()),
        }
    }

    /// The command line as Docker builds it: the entrypoint (or
    /// `--entrypoint`, which also drops the image's Cmd) followed by the
    /// arguments given, or the image's Cmd when none are.
    pub fn command(&self, entrypoint: Option<&[String]>, args: &[String]) -> Vec<String> {
        let (entrypoint, default_args) = match entrypoint {
            Some(given) => (given, &[][..]),
            None => (&self.entrypoint[..], &self.cmd[..]),
        };
        let args = if args.is_empty() { default_args } else { args };
        entrypoint.iter().chain(args).cloned().collect()
    }

    /// The image's environment with `given` entries replacing those of the
    /// same name.
    pub fn environment(&self, given: &[String]) -> Vec<String> {
        let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_owned();
        let overridden: std::collections::HashSet<String> = given.iter().map(|e| key(e)).collect();
        self.env
            .iter()
            .filter(|e| !overridden.contains(&key(e)))
            .chain(given)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_command_follows_dockers_rules() {
        let c = RunConfig {
            entrypoint: strings(&["/entry.sh"]),
            cmd: strings(&["nginx", "-g", "daemon off;"]),
            ..RunConfig::default()
        };
        assert_eq!(
            c.command(None, &[]),
            strings(&["/entry.sh", "nginx", "-g", "daemon off;"])
        );
        assert_eq!(
            c.command(None, &strings(&["sh"])),
            strings(&["/entry.sh", "sh"])
        );
        assert_eq!(
            c.command(Some(&strings(&["/bin/sh"])), &[]),
            strings(&["/bin/sh"])
        );
        assert_eq!(
            c.command(Some(&[]), &strings(&["ls", "/"])),
            strings(&["ls", "/"])
        );
        let plain = RunConfig {
            cmd: strings(&["sh"]),
            ..RunConfig::default()
        };
        assert_eq!(plain.command(None, &[]), strings(&["sh"]));
    }

    #[test]
    fn given_variables_replace_the_images() {
        let c = RunConfig {
            env: strings(&["PATH=/usr/bin", "A=1", "B=2"]),
            ..RunConfig::default()
        };
        assert_eq!(
            c.environment(&strings(&["A=9", "C=3"])),
            strings(&["PATH=/usr/bin", "B=2", "A=9", "C=3"])
        );
    }
}
