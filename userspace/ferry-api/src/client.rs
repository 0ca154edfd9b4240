//! The API client used by the `ferry` CLI: HTTP/1.1 over ferryd's unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::{
    Method, Request, StatusCode,
    body::{Bytes, Frame, Incoming},
};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

use crate::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach ferryd at {path}: {source} ({hint})")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("talking to ferryd: {0}")]
    Http(String),
    /// ferryd answered with an error: its message is the whole story.
    #[error("{message}")]
    Api { status: StatusCode, message: String },
}

/// A reader as a stream of chunks, as it is read (a request or response
/// body that may be large).
pub fn read_chunks(
    reader: impl tokio::io::AsyncRead + Send + Unpin + 'static,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt as _;
    futures::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        let mut buf = vec![0u8; 256 * 1024];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(reader)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    /// Sends one request; decodes a JSON answer, or returns ferryd's error.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let bytes = self.raw(method, path, body).await?;
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Http(format!("bad answer: {e}")))
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Bytes, ClientError> {
        self.send(method, path, body)
            .await?
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    /// Sends one request; the body of a successful answer, to read as it
    /// arrives (logs), or ferryd's error.
    pub async fn stream(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Incoming, ClientError> {
        self.send(method, path, body).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Incoming, ClientError> {
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Http(e.to_string()))?,
            None => Vec::new(),
        };
        self.send_body(
            method,
            path,
            "application/json",
            Full::new(Bytes::from(payload)),
        )
        .await
    }

    /// Sends a file as the request body, as it is read (an image archive
    /// can be large); decodes a JSON answer.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        file: impl tokio::io::AsyncRead + Send + Unpin + 'static,
    ) -> Result<T, ClientError> {
        use futures::StreamExt as _;
        let chunks = read_chunks(file).map(|c| c.map(Frame::data));
        let bytes = self
            .send_body(
                Method::POST,
                path,
                "application/x-tar",
                StreamBody::new(chunks),
            )
            .await?
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Http(format!("bad answer: {e}")))
    }

    /// Sends a request that takes over the connection (`exec -i/-t`,
    /// `attach`: see ferryd's API); returns the connection once ferryd has
    /// agreed.
    pub async fn take_over(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Http(e.to_string()))?,
            None => Vec::new(),
        };
        let response = self
            .respond(
                Method::POST,
                path,
                "application/json",
                true,
                Full::new(Bytes::from(payload)),
            )
            .await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(ClientError::Http(format!(
                "ferryd did not take over the connection (status {})",
                response.status()
            )));
        }
        hyper::upgrade::on(response)
            .await
            .map(TokioIo::new)
            .map_err(|e| ClientError::Http(format!("taking over the connection: {e}")))
    }

    async fn send_body<B>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: B,
    ) -> Result<Incoming, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.respond(method, path, content_type, false, body)
            .await
            .map(hyper::Response::into_body)
    }

    /// Sends one request; the answer if it succeeded (or took over the
    /// connection), else ferryd's error.
    async fn respond<B>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        upgrade: bool,
        body: B,
    ) -> Result<hyper::Response<Incoming>, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let http = |e: &dyn std::fmt::Display| ClientError::Http(e.to_string());
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    hint: match source.kind() {
                        std::io::ErrorKind::PermissionDenied => {
                            "only root and members of ferryd's --group may use the API"
                        }
                        _ => "is ferryd running?",
                    },
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
        tokio::spawn(conn.with_upgrades());
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://ferryd{path}"))
            .header("host", "ferryd")
            .header("content-type", content_type);
        if upgrade {
            request = request
                .header("connection", "Upgrade")
                .header("upgrade", "tcp");
        }
        let request = request.body(body).map_err(|e| http(&e))?;
        let response = sender.send_request(request).await.map_err(|e| http(&e))?;
        let status = response.status();
        if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(response);
        }
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| http(&e))?
            .to_bytes();
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(ClientError::Api { status, message })
    }
}
