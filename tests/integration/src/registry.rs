//! Debian's `docker-registry` (the distribution project's registry) serving
//! the real protocol on 127.0.0.1:5000 inside a world's host namespace, and
//! Debian's `skopeo` pushing images to it.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{Background, World, check, output, wait_until};

pub const ADDR: &str = "127.0.0.1:5000";
/// Where a registry that wants a login listens.
pub const AUTH_ADDR: &str = "127.0.0.1:5001";

pub struct Registry {
    _server: Background,
    addr: &'static str,
    /// user:password for pushes to a registry that wants a login.
    creds: Option<String>,
}

impl Registry {
    /// Starts a registry whose storage is in the world's directory; returns
    /// once it answers `/v2/`.
    pub fn start(world: &World) -> Self {
        Self::start_with(world, ADDR, None)
    }

    /// A registry on AUTH_ADDR that admits `user` with `password` only
    /// (basic auth against an htpasswd file, bcrypt as it requires).
    pub fn start_with_login(world: &World, user: &str, password: &str) -> Self {
        Self::start_with(world, AUTH_ADDR, Some((user, password)))
    }

    fn start_with(world: &World, addr: &'static str, login: Option<(&str, &str)>) -> Self {
        let dir = world
            .dir
            .join(format!("registry-{}", addr.replace([':', '.'], "-")));
        std::fs::create_dir_all(&dir).expect("registry dir");
        let auth = match login {
            None => String::new(),
            Some((user, password)) => {
                let out = output(Command::new("htpasswd").args(["-Bbn", user, password]));
                assert!(out.status.success(), "htpasswd failed");
                let file = dir.join("htpasswd");
                std::fs::write(&file, &out.stdout).expect("htpasswd file");
                format!(
                    "auth:\n  htpasswd:\n    realm: ferry-test\n    path: {}\n",
                    file.display()
                )
            }
        };
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n{auth}",
                dir.join("data").display()
            ),
        )
        .expect("registry config");
        let log = std::fs::File::create(dir.join("log")).expect("registry log");
        let mut cmd = world.in_host("docker-registry", &["serve", &config.display().to_string()]);
        cmd.stdout(Stdio::null()).stderr(log);
        let server = Background::spawn(cmd);
        // Up once it answers /v2/ at all (401 when it wants a login).
        let up = wait_until(Duration::from_secs(10), || {
            let out = output(&mut world.in_host(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "1",
                    &format!("http://{addr}/v2/"),
                ],
            ));
            matches!(&out.stdout[..], b"200" | b"401")
        });
        assert!(
            up,
            "the registry did not come up: {}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        Self {
            _server: server,
            addr,
            creds: login.map(|(u, p)| format!("{u}:{p}")),
        }
    }

    /// `host:port` of this registry.
    pub fn addr(&self) -> &'static str {
        self.addr
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
        let creds = self.creds.as_ref().map(|c| format!("--dest-creds={c}"));
        if let Some(creds) = &creds {
            args.push(creds);
        }
        args.extend_from_slice(extra);
        check(
            &mut world.in_host(
                "skopeo",
                &[
                    &args[..],
                    &[
                        &format!("oci-archive:{}", archive.display()),
                        &format!("docker://{}/{repo_tag}", self.addr),
                    ],
                ]
                .concat(),
            ),
        );
    }
}
