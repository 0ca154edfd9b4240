//! Registry credentials on the client side, as Docker keeps them: `ferry
//! login` checks them with ferryd and stores them in
//! `$FERRY_CONFIG/config.json` (default `~/.ferry`), in Docker's format
//! (`{"auths": {"host:port": {"auth": base64("user:password")}}}`); a pull
//! sends the entry for the image's registry. Docker's own file
//! (`$DOCKER_CONFIG/config.json`, default `~/.docker`) is read when ferry's
//! has no entry, so a `docker login` serves ferry too.

use std::{
    io::{BufRead as _, IsTerminal as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use ferry::{api::AuthConfig, client::Client};
use hyper::Method;
use serde_json::{Map, Value};

/// The key Docker uses for Docker Hub in its config file.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
const DOCKER_HUB: &str = "docker.io";

#[derive(clap::Args)]
pub struct LoginArgs {
    #[arg(short, long)]
    username: Option<String>,
    /// The password (visible to other users in the process list: prefer
    /// --password-stdin).
    #[arg(short, long)]
    password: Option<String>,
    /// Read the password from stdin.
    #[arg(long)]
    password_stdin: bool,
    /// The registry (host[:port]); default Docker Hub.
    server: Option<String>,
}

fn ferry_config() -> anyhow::Result<PathBuf> {
    config_file("FERRY_CONFIG", ".ferry")
}

fn config_file(env: &str, home_dir: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os(env) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(home_dir),
    };
    Ok(dir.join("config.json"))
}

/// `docker.io` for Docker Hub's spellings, else the registry as given.
fn registry_key(server: &str) -> String {
    let bare = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    match bare {
        "" | "index.docker.io/v1" | "index.docker.io" | "registry-1.docker.io" | DOCKER_HUB => {
            DOCKER_HUB.to_owned()
        }
        other => other.to_owned(),
    }
}

fn read(path: &PathBuf) -> anyhow::Result<Value> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Value::Object(Map::new())),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The entry of `config` for `registry`: user and password.
fn entry(config: &Value, registry: &str) -> Option<(String, String)> {
    let auths = config.get("auths")?.as_object()?;
    let value = auths
        .iter()
        .find(|(key, _)| registry_key(key) == registry)?
        .1;
    let decoded = STANDARD.decode(value.get("auth")?.as_str()?).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The stored credentials for the registry of image `name`, if any.
pub fn for_image(name: &str) -> anyhow::Result<Option<AuthConfig>> {
    let normalized = ferry_image::normalize(name)?;
    let registry = registry_key(normalized.split('/').next().unwrap_or(DOCKER_HUB));
    for path in [ferry_config()?, config_file("DOCKER_CONFIG", ".docker")?] {
        if let Some((username, password)) = entry(&read(&path)?, &registry) {
            return Ok(Some(AuthConfig {
                username,
                password,
                server_address: registry,
            }));
        }
    }
    Ok(None)
}

/// Writes the config atomically, readable by its owner only.
fn write(path: &PathBuf, config: &Value) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    serde_json::to_writer_pretty(&mut file, config)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// `ferry login`.
pub async fn login(client: &Client, args: LoginArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_key(args.server.as_deref().unwrap_or(DOCKER_HUB));
    let username = match args.username {
        Some(u) => u,
        None => prompt("Username: ")?,
    };
    let password = match (args.password, args.password_stdin) {
        (Some(_), true) => anyhow::bail!("--password and --password-stdin are exclusive"),
        (Some(p), false) => p,
        (None, true) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            line.trim_end_matches(['\n', '\r']).to_owned()
        }
        (None, false) => prompt_hidden("Password: ")?,
    };
    if username.is_empty() || password.is_empty() {
        anyhow::bail!("a username and a password are needed");
    }
    let auth = AuthConfig {
        username,
        password,
        server_address: registry.clone(),
    };
    client
        .call::<Value>(Method::POST, "/auth", Some(&auth))
        .await?;
    let path = ferry_config()?;
    let mut config = read(&path)?;
    let encoded = STANDARD.encode(format!("{}:{}", auth.username, auth.password));
    let object = config
        .as_object_mut()
        .with_context(|| format!("{} is not a JSON object", path.display()))?;
    let auths = object
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .with_context(|| format!("\"auths\" in {} is not an object", path.display()))?;
    auths.retain(|key, _| registry_key(key) != registry);
    let key = if registry == DOCKER_HUB {
        DOCKER_HUB_KEY.to_owned()
    } else {
        registry
    };
    auths.insert(key, serde_json::json!({ "auth": encoded }));
    write(&path, &config)?;
    out!("Login Succeeded (credentials stored in {})", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `ferry logout [SERVER]`.
pub fn logout(server: Option<&str>) -> anyhow::Result<ExitCode> {
    let registry = registry_key(server.unwrap_or(DOCKER_HUB));
    let path = ferry_config()?;
    let mut config = read(&path)?;
    let removed = config
        .get_mut("auths")
        .and_then(Value::as_object_mut)
        .map(|auths| {
            let before = auths.len();
            auths.retain(|key, _| registry_key(key) != registry);
            before != auths.len()
        })
        .unwrap_or(false);
    if !removed {
        out!("Not logged in to {registry}");
        return Ok(ExitCode::SUCCESS);
    }
    write(&path, &config)?;
    out!("Removed login credentials for {registry}");
    Ok(ExitCode::SUCCESS)
}

fn prompt(text: &str) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("no username given (-u) and stdin is not a terminal to ask on");
    }
    eprint!("{text}");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Asks for a password with echo off.
fn prompt_hidden(text: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("no password given and stdin is not a terminal: use --password-stdin");
    }
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet)?;
    eprint!("{text}");
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_has_one_key_whatever_the_spelling() {
        for s in [
            "",
            "docker.io",
            "https://index.docker.io/v1/",
            "index.docker.io",
        ] {
            assert_eq!(registry_key(s), "docker.io", "{s:?}");
        }
        assert_eq!(registry_key("localhost:5001"), "localhost:5001");
    }

    #[test]
    fn entries_are_found_by_registry_in_dockers_format() {
        let config = serde_json::json!({ "auths": {
            DOCKER_HUB_KEY: { "auth": STANDARD.encode("hub:secret") },
            "127.0.0.1:5001": { "auth": STANDARD.encode("me:pa:ss") },
        }});
        assert_eq!(
            entry(&config, "docker.io"),
            Some(("hub".into(), "secret".into()))
        );
        assert_eq!(
            entry(&config, "127.0.0.1:5001"),
            Some(("me".into(), "pa:ss".into()))
        );
        assert_eq!(entry(&config, "example.com"), None);
    }
}
