//! Debian's `docker-registry` (the distribution project's registry) serving
//! the real protocol on 127.0.0.1:5000 inside a world's host namespace, and
//! Debian's `skopeo` pushing images to it.

use std::{path::Path, process::Stdio, time::Duration};

use crate::{Background, World, check, output, wait_until};

pub const ADDR: &str = "127.0.0.1:5000";

pub struct Registry {
    _server: Background,
}

impl Registry {
    /// Starts a registry whose storage is in the world's directory; returns
    /// once it answers `/v2/`.
    pub fn start(world: &World) -> Self {
        let dir = world.dir.join("registry");
        std::fs::create_dir_all(&dir).expect("registry dir");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {ADDR}\n",
                dir.join("data").display()
            ),
        )
        .expect("registry config");
        let log = std::fs::File::create(dir.join("log")).expect("registry log");
        let mut cmd = world.in_host("docker-registry", &["serve", &config.display().to_string()]);
        cmd.stdout(Stdio::null()).stderr(log);
        let server = Background::spawn(cmd);
        let up = wait_until(Duration::from_secs(10), || {
            output(&mut world.in_host(
                "curl",
                &["-sf", "--max-time", "1", &format!("http://{ADDR}/v2/")],
            ))
            .status
            .success()
        });
        assert!(
            up,
            "the registry did not come up: {}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        Self { _server: server }
    }

    /// Pushes an OCI image layout archive to `repo:tag` with skopeo.
    pub fn push(&self, world: &World, archive: &Path, repo_tag: &str) {
        self.push_with(world, archive, repo_tag, &[]);
    }

    /// Pushes every platform of an image index.
    pub fn push_all(&self, world: &World, archive: &Path, repo_tag: &str) {
        self.push_with(world, archive, repo_tag, &["--all"]);
    }

    fn push_with(&self, world: &World, archive: &Path, repo_tag: &str, extra: &[&str]) {
        let mut args = vec!["copy", "--quiet", "--dest-tls-verify=false"];
        args.extend_from_slice(extra);
        check(
            &mut world.in_host(
                "skopeo",
                &[
                    &args[..],
                    &[
                        &format!("oci-archive:{}", archive.display()),
                        &format!("docker://{ADDR}/{repo_tag}"),
                    ],
                ]
                .concat(),
            ),
        );
    }
}
