//! The HTTP/JSON API on ferryd's unix socket, shaped like Docker's Engine
//! API where that fits. The bodies (`types`) are shared with the `ferry`
//! client; other engines' endpoints are in `endpoints`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, FromRequest, FromRequestParts, Path, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::Deserialize;

mod endpoints;
mod streams;
mod types;

pub use types::*;

use crate::daemon::Daemon;

pub const API_VERSION: &str = "0.1";

/// Largest request body ferryd reads. A run request with thousands of
/// publishes, binds and environment entries fits several times over.
pub const MAX_BODY: usize = 1 << 20;

/// A JSON request body; malformed, mistyped or oversized bodies are refused
/// with an [`ApiError`] naming the problem.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct Body<T>(pub(crate) T);

/// A query string, refused like [`Body`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub(crate) T);

/// An API failure: the HTTP status says which kind, the message says what.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// A datapath map has no room left.
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Internal(_)) {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            message: self.to_string(),
        };
        (self.status(), Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::TooLarge(format!(
                "request body larger than the limit of {}",
                crate::validate::Bytes(MAX_BODY)
            ))
        } else {
            Self::BadRequest(format!("invalid request body: {}", e.body_text()))
        }
    }
}

impl From<crate::validate::InvalidInput> for ApiError {
    fn from(e: crate::validate::InvalidInput) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<ferry_net::agent::AgentError> for ApiError {
    fn from(e: ferry_net::agent::AgentError) -> Self {
        use ferry_net::agent::AgentError as E;
        match e {
            E::Invalid(m) => Self::BadRequest(m),
            E::NotFound(m) => Self::NotFound(m),
            E::Conflict(m) => Self::Conflict(m),
            E::Exhausted(m) => Self::Unavailable(m),
            E::Full(m) => Self::Full(m),
            E::Internal(m) => Self::Internal(m),
        }
    }
}

impl From<crate::network::NetworkError> for ApiError {
    fn from(e: crate::network::NetworkError) -> Self {
        ferry_net::agent::AgentError::from(e).into()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::BadRequest(format!("invalid query: {}", e.body_text()))
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

#[derive(Debug, Deserialize)]
struct StopQuery {
    t: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ConntrackQuery {
    container: Option<String>,
    proto: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DebugQuery {
    on: bool,
}

#[derive(Debug, Deserialize)]
struct KillQuery {
    signal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    /// A number of lines, or `all`.
    tail: Option<String>,
    stdout: Option<bool>,
    stderr: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ImageQuery {
    name: String,
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Deserialize)]
struct PullQuery {
    name: String,
}

#[derive(Debug, Deserialize)]
struct TagQuery {
    source: String,
    target: String,
}

#[derive(Debug, Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/_ping", get(|| async { "OK" }))
        .route("/version", get(|| async { Json(serde_json::json!({ "ApiVersion": API_VERSION, "Version": env!("CARGO_PKG_VERSION") })) }))
        .route("/containers/run", post(run))
        .route("/containers/json", get(list))
        .route("/containers/{id}/json", get(inspect))
        .route("/containers/{id}/stop", post(stop))
        .route("/containers/{id}/stats", get(stats))
        .route("/containers/{id}/wait", post(wait))
        .route("/containers/{id}/kill", post(kill))
        .route("/containers/{id}/logs", get(logs))
        .route("/containers/{id}/exec", post(streams::exec))
        .route("/containers/{id}/attach", post(streams::attach))
        .route("/containers/{id}", delete(remove))
        .route("/datapath", get(datapath))
        .route("/cluster", get(cluster))
        .route("/datapath/debug", post(datapath_debug))
        .route("/conntrack", get(conntrack).delete(conntrack_flush))
        .route("/networks", get(network_list))
        .route("/networks/create", post(network_create))
        .route("/networks/{id}", get(network_inspect).delete(network_remove))
        .route("/networks/{id}/connect", post(network_connect))
        .route("/networks/{id}/disconnect", post(network_disconnect))
        .route(
            "/images/load",
            post(image_load).layer(DefaultBodyLimit::disable()),
        )
        .route("/images/pull", post(image_pull))
        .route("/images/prune", post(image_prune))
        .route("/containers/prune", post(container_prune))
        .route("/system/df", get(system_df))
        .route("/auth", post(login))
        .route("/images/save", post(image_save))
        .route("/images/json", get(image_list))
        .route("/images/inspect", get(image_inspect))
        .route("/images/tag", post(image_tag))
        .route("/images/remove", delete(image_remove))
        .merge(endpoints::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&daemon),
            crate::metrics::count_requests,
        ))
        .with_state(daemon)
}

async fn run(
    State(d): State<Arc<Daemon>>,
    Body(req): Body<RunRequest>,
) -> Result<(StatusCode, Json<ContainerJson>), ApiError> {
    let record = d.run(req).await?;
    Ok((StatusCode::CREATED, Json(ContainerJson::from(&record))))
}

async fn list(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<ListQuery>,
) -> Json<Vec<ContainerJson>> {
    Json(
        d.list(q.all)
            .await
            .iter()
            .map(ContainerJson::from)
            .collect(),
    )
}

async fn inspect(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<Json<ContainerJson>, ApiError> {
    Ok(Json(d.inspect_json(&id).await?))
}

async fn stop(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> Result<StatusCode, ApiError> {
    d.stop(&id, q.t.unwrap_or(10)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    d.remove(&id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<Json<Stats>, ApiError> {
    Ok(Json(d.stats(&id).await?))
}

async fn datapath(State(d): State<Arc<Daemon>>) -> Result<Json<DatapathJson>, ApiError> {
    Ok(Json(d.datapath_info().await?))
}

async fn cluster(State(d): State<Arc<Daemon>>) -> Result<Json<ClusterJson>, ApiError> {
    Ok(Json(d.cluster_info().await?))
}

async fn conntrack(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<ConntrackQuery>,
) -> Result<Json<Vec<crate::conntrack::Flow>>, ApiError> {
    Ok(Json(
        d.conntrack(q.container.as_deref(), q.proto.as_deref())
            .await?,
    ))
}

async fn conntrack_flush(
    State(d): State<Arc<Daemon>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::json!({ "Removed": d.conntrack_flush().await? }),
    ))
}

async fn wait(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<Json<WaitResponse>, ApiError> {
    Ok(Json(d.wait(&id).await?))
}

async fn kill(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(q): Query<KillQuery>,
) -> Result<StatusCode, ApiError> {
    d.kill(&id, q.signal.as_deref().unwrap_or("SIGKILL"))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The container's output in Docker's multiplexed framing (see `logs`);
/// with `follow`, the body stays open until the container has exited.
async fn logs(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let tail = match q.tail.as_deref() {
        None | Some("all") => None,
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| ApiError::BadRequest(format!("invalid --tail {n:?}")))?,
        ),
    };
    let streams = match (q.stdout, q.stderr) {
        (None, None) => (true, true),
        (out, err) => (out.unwrap_or(false), err.unwrap_or(false)),
    };
    let (path, exited) = d.log_source(&id).await?;
    let (tx, rx) = futures::channel::mpsc::channel(64);
    tokio::spawn(crate::logs::follow(
        path, exited, tail, q.follow, streams, tx,
    ));
    Ok(axum::body::Body::from_stream(rx).into_response())
}

async fn datapath_debug(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<DebugQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::json!({ "DebugLog": d.set_debug_log(q.on).await? }),
    ))
}

async fn network_create(
    State(d): State<Arc<Daemon>>,
    Body(req): Body<NetworkCreate>,
) -> Result<(StatusCode, Json<NetworkJson>), ApiError> {
    Ok((StatusCode::CREATED, Json(d.network_create(req).await?)))
}

async fn network_list(State(d): State<Arc<Daemon>>) -> Json<Vec<NetworkJson>> {
    Json(d.network_list().await)
}

async fn network_inspect(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<Json<NetworkJson>, ApiError> {
    Ok(Json(d.network_inspect(&id).await?))
}

async fn network_remove(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    d.network_remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn network_connect(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Body(req): Body<NetworkConnect>,
) -> Result<StatusCode, ApiError> {
    d.network_connect(&id, req).await?;
    Ok(StatusCode::OK)
}

async fn network_disconnect(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Body(req): Body<NetworkDisconnect>,
) -> Result<StatusCode, ApiError> {
    d.network_disconnect(&id, req).await?;
    Ok(StatusCode::OK)
}

/// The archive arrives as the request body; it is written to the store's
/// temporary directory as it comes, then loaded.
async fn image_load(
    State(d): State<Arc<Daemon>>,
    body: axum::body::Body,
) -> Result<Json<Vec<ferry_image::LoadedImage>>, ApiError> {
    use futures::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let path = d.image_upload_path();
    let written = async {
        let mut file = tokio::fs::File::create(&path).await?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk.map_err(std::io::Error::other)?)
                .await?;
        }
        file.flush().await
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(ApiError::BadRequest(format!("receiving the archive: {e}")));
    }
    Ok(Json(d.image_load(&path).await?))
}

/// Progress as JSON lines (`Id`, `Status`, `Current`, `Total`), then one
/// line with `Image` (what was pulled) or `Error`: the status code is sent
/// before the registry has said anything. The body, if any, is the
/// registry's credentials (`AuthConfig`).
async fn image_pull(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<PullQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let auth = match body.is_empty() {
        true => None,
        false => Some(
            serde_json::from_slice::<AuthConfig>(&body)
                .map_err(|e| ApiError::BadRequest(format!("invalid credentials: {e}")))?,
        ),
    };
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<String, std::io::Error>>();
    let progress = tx.clone();
    let report: ferry_image::Report = Arc::new(move |p: ferry_image::Progress| {
        if let Ok(line) = serde_json::to_string(&p) {
            let _ = progress.unbounded_send(Ok(line + "\n"));
        }
    });
    let pull = d.image_pull(&q.name, auth, report)?;
    tokio::spawn(async move {
        let last = match pull.await {
            Ok(Ok(image)) => serde_json::json!({ "Image": image }),
            Ok(Err(e)) => serde_json::json!({ "Error": e.to_string() }),
            Err(e) => serde_json::json!({ "Error": e.to_string() }),
        };
        let _ = tx.unbounded_send(Ok(format!("{last}\n")));
    });
    Ok(axum::body::Body::from_stream(rx).into_response())
}

async fn container_prune(State(d): State<Arc<Daemon>>) -> Result<Json<PruneReport>, ApiError> {
    Ok(Json(d.container_prune().await?))
}

#[derive(Debug, Deserialize)]
struct PruneQuery {
    #[serde(default)]
    all: bool,
}

async fn image_prune(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<PruneQuery>,
) -> Result<Json<PruneReport>, ApiError> {
    Ok(Json(d.image_prune(q.all).await?))
}

async fn system_df(State(d): State<Arc<Daemon>>) -> Json<SystemDf> {
    Json(d.system_df().await)
}

/// Checks credentials with their registry (`ferry login`); ferryd keeps
/// nothing, the client stores them and sends them with each pull.
async fn login(
    State(d): State<Arc<Daemon>>,
    Body(req): Body<AuthConfig>,
) -> Result<Json<serde_json::Value>, ApiError> {
    d.image_login(req).await?;
    Ok(Json(serde_json::json!({ "Status": "Login Succeeded" })))
}

/// The archive as the response body, read from a file ferryd wrote first
/// (so that an error is an error status, not a cut-off archive).
async fn image_save(
    State(d): State<Arc<Daemon>>,
    Body(req): Body<ImageSave>,
) -> Result<Response, ApiError> {
    let file = tokio::fs::File::from_std(d.image_save(req.names).await?);
    let chunks = ferry_api::client::read_chunks(file);
    Ok(axum::body::Body::from_stream(chunks).into_response())
}

async fn image_list(State(d): State<Arc<Daemon>>) -> Json<Vec<ImageSummary>> {
    Json(d.image_list().await)
}

async fn image_inspect(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<ImageQuery>,
) -> Result<Json<ImageInspect>, ApiError> {
    Ok(Json(d.image_inspect(&q.name).await?))
}

async fn image_tag(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<TagQuery>,
) -> Result<StatusCode, ApiError> {
    d.image_tag(&q.source, &q.target).await?;
    Ok(StatusCode::CREATED)
}

async fn image_remove(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<ImageQuery>,
) -> Result<Json<Vec<ImageDeleted>>, ApiError> {
    Ok(Json(d.image_remove(&q.name, q.force).await?))
}
