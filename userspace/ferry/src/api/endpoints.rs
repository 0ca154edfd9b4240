//! The endpoint API (see `ferry_api::endpoint`): what the CNI plugin and the
//! Docker plugin ask of the network agent.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use ferry_api::endpoint::{EndpointCreate, EndpointGc, EndpointJson, Removed};
use serde::Deserialize;

use super::{ApiError, Body, Query};
use crate::daemon::Daemon;

#[derive(Debug, Deserialize)]
struct EndpointQuery {
    kind: Option<String>,
    key: Option<String>,
}

impl EndpointQuery {
    /// Both parts, for the calls that name one endpoint.
    fn named(&self) -> Result<(&str, &str), ApiError> {
        match (&self.kind, &self.key) {
            (Some(kind), Some(key)) => Ok((kind, key)),
            _ => Err(ApiError::BadRequest(
                "name the endpoint with ?kind=...&key=...".into(),
            )),
        }
    }
}

pub(super) fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/endpoints", get(list).post(create).delete(remove))
        .route("/endpoints/check", post(check))
        .route("/endpoints/gc", post(gc))
}

async fn create(
    State(d): State<Arc<Daemon>>,
    Body(req): Body<EndpointCreate>,
) -> Result<(StatusCode, Json<EndpointJson>), ApiError> {
    Ok((StatusCode::CREATED, Json(d.endpoint_create(req).await?)))
}

async fn list(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<EndpointQuery>,
) -> Result<Json<Vec<EndpointJson>>, ApiError> {
    Ok(Json(
        d.endpoint_list(q.kind.as_deref(), q.key.as_deref()).await?,
    ))
}

async fn remove(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<EndpointQuery>,
) -> Result<Json<Removed>, ApiError> {
    let (kind, key) = q.named()?;
    Ok(Json(d.endpoint_delete(kind, key).await?))
}

async fn check(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<EndpointQuery>,
) -> Result<Json<EndpointJson>, ApiError> {
    let (kind, key) = q.named()?;
    Ok(Json(d.endpoint_check(kind, key).await?))
}

async fn gc(
    State(d): State<Arc<Daemon>>,
    Body(req): Body<EndpointGc>,
) -> Result<Json<Removed>, ApiError> {
    Ok(Json(d.endpoint_gc(req).await?))
}
