//! `ferry-cni`: ferry's CNI plugin (spec 0.3.0 to 1.1.0). It is thin: it
//! reads the runtime's request (`CNI_*` variables, the network
//! configuration on stdin), asks ferryd's endpoint API over its socket, and
//! writes the answer as the spec wants it. All state lives in ferryd.
//!
//! An attachment is ferryd's endpoint of kind `cni` and key
//! `<network name>/<container id>/<ifname>`.

mod conf;
mod result;

use std::{io::Read as _, process::ExitCode, time::Duration};

use ferry_api::{
    client::{Client, ClientError},
    endpoint::{self, EndpointCreate, EndpointGc, EndpointJson, Removed},
};
use hyper::{Method, StatusCode};

use crate::conf::{Command, Request};

/// Spec versions this plugin speaks.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// How long one call to ferryd may take: a runtime waits for its plugin
/// with no timeout of its own.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A CNI error: a code (the spec's well-known ones below 100, ferry's own
/// from 100), a message and details.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
}

/// The spec's well-known codes, and ferry's.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// ferry: something is already taken (a host port, an address).
    pub const CONFLICT: u32 = 100;
    /// ferry: no room left (addresses, datapath maps).
    pub const NO_ROOM: u32 = 101;
    /// ferry: ferryd failed.
    pub const AGENT: u32 = 102;
}

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let request = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("reading stdin: {e}")))
        .and_then(|_| Request::parse(&stdin, |k| std::env::var(k).ok()));
    let version = request
        .as_ref()
        .ok()
        .map_or_else(|| conf::version_of(&stdin), |r| r.conf.cni_version.clone());
    let outcome = request.and_then(|request| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::new(code::IO_FAILURE, format!("starting: {e}")))?
            .block_on(run(request))
    });
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", result::error(&version, &e));
            ExitCode::FAILURE
        }
    }
}

/// Carries out one command; what it prints on success.
async fn run(request: Request) -> Result<Option<String>, CniError> {
    let conf = &request.conf;
    let client = Client::new(&conf.socket);
    match &request.command {
        Command::Version => Ok(Some(result::version(&conf.cni_version))),
        Command::Add(add) => {
            let create = EndpointCreate {
                kind: "cni".into(),
                key: request.key(),
                name: add.name.clone(),
                netns: add.netns.clone(),
                ifname: request.ifname.clone(),
                network: conf.network.clone(),
                ip: add.ip,
                mac: add.mac.clone(),
                ports: add.ports.clone(),
            };
            let ep: EndpointJson = call(&client, Method::POST, "/endpoints", Some(&create)).await?;
            Ok(Some(result::add(conf, &ep)?))
        }
        Command::Check => {
            let path = format!(
                "/endpoints/check?{}",
                endpoint::query("cni", &request.key())
            );
            let ep: EndpointJson = call(&client, Method::POST, &path, NONE).await?;
            result::check(conf, &ep)?;
            Ok(None)
        }
        Command::Del => {
            let path = format!("/endpoints?{}", endpoint::query("cni", &request.key()));
            match call::<Removed>(&client, Method::DELETE, &path, NONE).await {
                Ok(_) => Ok(None),
                // Nothing can be left to delete while ferryd is down: the
                // next ferryd forgets endpoints whose interfaces are gone.
                // A DEL that failed here would block the runtime's cleanup
                // for good.
                Err(e) if e.code == code::TRY_AGAIN_LATER => {
                    eprintln!("ferry-cni: {} (DEL done without it)", e.msg);
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        }
        Command::Gc(valid) => {
            let scope = format!("{}/", conf.name);
            let gc = EndpointGc {
                kind: "cni".into(),
                keep: valid
                    .iter()
                    .map(|(id, ifname)| format!("{scope}{id}/{ifname}"))
                    .collect(),
                scope,
            };
            call::<Removed>(&client, Method::POST, "/endpoints/gc", Some(&gc)).await?;
            Ok(None)
        }
        Command::Status => {
            let path = format!("/networks/{}", conf.network);
            call::<serde_json::Value>(&client, Method::GET, &path, NONE)
                .await
                .map_err(|e| CniError {
                    code: code::NOT_AVAILABLE,
                    ..e
                })?;
            Ok(None)
        }
    }
}

const NONE: Option<&()> = None;

/// One call to ferryd; its errors as CNI errors.
async fn call<T: serde::de::DeserializeOwned>(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> Result<T, CniError> {
    let answer = tokio::time::timeout(CALL_TIMEOUT, client.call(method, path, body))
        .await
        .map_err(|_| {
            CniError::new(
                code::TRY_AGAIN_LATER,
                format!("ferryd did not answer within {}s", CALL_TIMEOUT.as_secs()),
            )
        })?;
    answer.map_err(|e| match e {
        ClientError::Connect { .. } => {
            CniError::new(code::TRY_AGAIN_LATER, format!("ferryd is not running: {e}"))
        }
        ClientError::Http(m) => CniError::new(code::AGENT, format!("talking to ferryd: {m}")),
        ClientError::Api { status, message } => {
            let code = match status {
                StatusCode::BAD_REQUEST => code::INVALID_CONFIG,
                StatusCode::NOT_FOUND => code::CONTAINER_UNKNOWN,
                StatusCode::CONFLICT => code::CONFLICT,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE => code::NO_ROOM,
                _ => code::AGENT,
            };
            CniError::new(code, format!("ferry: {message}"))
        }
    })
}
