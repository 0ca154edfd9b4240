//! Endpoints that carry a container's streams: `exec` and `attach`.
//!
//! Interactive ones (`-i`, `-t`, `attach`) take over the connection, as
//! Docker's API does: the request carries `Connection: Upgrade` and
//! `Upgrade: tcp`, ferryd answers 101 and from then on the connection is
//! the relay's socket (see `attach`): output frames one way, stdin,
//! window-size and end-of-stdin frames the other.

use std::sync::Arc;

use axum::{
    extract::{FromRequestParts, Path, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt as _;
use tracing::debug;

use super::{ApiError, Body, ExecRequest};
use crate::daemon::Daemon;

/// The connection, if the client asked to take it over.
pub(super) struct Upgrade(Option<OnUpgrade>);

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let asked = parts
            .headers
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            });
        Ok(Self(
            asked
                .then(|| parts.extensions.remove::<OnUpgrade>())
                .flatten(),
        ))
    }
}

impl Upgrade {
    fn required(self, what: &str) -> Result<OnUpgrade, ApiError> {
        self.0.ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{what} takes over the connection: send Connection: Upgrade and Upgrade: tcp"
            ))
        })
    }
}

/// Runs a command in the container. Without `-i`/`-t` the answer's body is
/// its output in the multiplexed framing, ended by an exit frame (see
/// `logs::EXIT_STREAM`); with them, the connection is taken over.
pub(super) async fn exec(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    upgrade: Upgrade,
    Body(req): Body<ExecRequest>,
) -> Result<Response, ApiError> {
    let interactive = req.tty || req.attach_stdin;
    let upgrade = match interactive {
        true => Some(upgrade.required("exec with a terminal or stdin")?),
        false => None,
    };
    let (child, sock) = d.exec(&id, req).await?;
    match upgrade {
        Some(on) => Ok(take_over(on, sock, Some(child))),
        None => {
            // The helper lives in the stream: a client that goes away ends it.
            let output = futures::stream::unfold((sock, child), |(mut sock, child)| async move {
                let mut buf = vec![0u8; 64 * 1024];
                match sock.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok::<_, std::io::Error>(buf), (sock, child)))
                    }
                    Err(e) => Some((Err(e), (sock, child))),
                }
            });
            Ok(axum::body::Body::from_stream(output).into_response())
        }
    }
}

/// Attaches to a running container's streams (`ferry attach`, `run -i/-t`).
pub(super) async fn attach(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    upgrade: Upgrade,
) -> Result<Response, ApiError> {
    let on = upgrade.required("attach")?;
    let sock = d.attach(&id).await?;
    Ok(take_over(on, sock, None))
}

/// Answers 101 and relays between the taken-over connection and `sock`
/// until both sides have ended; `helper` (an exec's) is kept until then.
fn take_over(
    on: OnUpgrade,
    mut sock: tokio::net::UnixStream,
    helper: Option<tokio::process::Child>,
) -> Response {
    tokio::spawn(async move {
        let _helper = helper;
        match on.await {
            Ok(upgraded) => {
                let mut conn = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut conn, &mut sock).await {
                    debug!("attached stream ended: {e}");
                }
            }
            Err(e) => debug!("the client did not take over the connection: {e}"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.docker.multiplexed-stream"),
    );
    response
}
