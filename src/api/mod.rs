//! The HTTP API of `lazyboot serve` (on `server.address:server.http_port`),
//! described in `docs/openapi.json` (kept true by `integration/openapi.rs`):
//!
//! - nodes, groups, images and swaps: [`fleet`].
//! - `GET|POST /api/v1/nodes/NAME/booted`: the node says it has booted
//!   (ends its boot timeline; a node's init can call it with `wget -q -O-`).
//! - `GET /api/v1/nodes/NAME/profiles`: its recorded boots.
//! - `GET /api/v1/nodes/NAME/profiles/BOOT?format=json|text|html|trace`:
//!   one boot's profile (`latest` for the newest).
//!
//! - `GET /metrics`: Prometheus text format (see [`crate::metrics`]).
//!
//! Who may call what: [`auth`].

pub(crate) mod auth;
mod bootfiles;
pub(crate) mod dashboard;
mod fleet;

use crate::profile::{html, report, BootedBy, ProfileError};
use crate::serve::ServeContext;
use auth::{Access, Credentials};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("HTTP API: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP API: {0}")]
    Serve(#[source] std::io::Error),
}

/// Serve the API until an I/O error on the listening socket.
pub(crate) async fn run(
    ctx: Arc<ServeContext>,
    access: Arc<Access>,
    fleet: Arc<crate::fleet::Fleet>,
) -> Result<(), ApiError> {
    let addr = SocketAddr::from((ctx.server_ip, ctx.config.server.http_port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })?;
    tracing::info!("HTTP API on http://{addr}/api/v1/nodes");
    ctx.mark_bound();
    let app = router(ctx, access, fleet).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await.map_err(ApiError::Serve)
}

pub(crate) fn router(
    ctx: Arc<ServeContext>,
    access: Arc<Access>,
    fleet: Arc<crate::fleet::Fleet>,
) -> Router {
    Router::new()
        .route("/api/v1/nodes/{name}/booted", get(booted).post(booted))
        .route("/api/v1/nodes/{name}/profiles", get(profiles))
        .route("/api/v1/nodes/{name}/profiles/{boot}", get(profile))
        .merge(bootfiles::routes())
        .with_state(ctx.clone())
        .route("/metrics", get(metrics).with_state(fleet.clone()))
        .merge(fleet::routes(fleet))
        .layer(axum::middleware::from_fn_with_state((ctx, access), guard))
        // The page holds no data: every route it calls is checked above.
        .merge(dashboard::routes())
}

/// Lets a request through to its route, or answers 401 (a call that
/// changes state without the token, or any call with a wrong one) or 403
/// (a read from outside `api_readers` without the token). See [`auth`].
async fn guard(
    State((ctx, access)): State<(Arc<ServeContext>, Arc<Access>)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let creds = access.credentials(req.headers());
    if creds == Credentials::Wrong {
        return unauthorized("wrong API token");
    }
    let booted_by = booted_node(req.uri().path());
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD) || booted_by.is_some();
    if creds == Credentials::Valid {
        return next.run(req).await;
    }
    if changes {
        // A node's own booted callback: its address is its credential.
        let from_the_node = match (booted_by, peer.ip()) {
            (Some(name), std::net::IpAddr::V4(ip)) => {
                ctx.inventory.by_ip(ip).is_some_and(|n| n.name == name)
            }
            _ => false,
        };
        if from_the_node {
            return next.run(req).await;
        }
        return unauthorized(
            "this call changes state and needs `Authorization: Bearer TOKEN` (server.api_token, \
             or the api.token file in the server's state directory); a node may report itself \
             booted from its own address",
        );
    }
    if access.may_read(peer.ip()) {
        return next.run(req).await;
    }
    error(
        StatusCode::FORBIDDEN,
        format!(
            "{} may not read the API without the token (send `Authorization: Bearer TOKEN`, or \
             add it to server.api_readers)",
            peer.ip()
        ),
    )
}

/// `NAME` of `/api/v1/nodes/NAME/booted`.
fn booted_node(path: &str) -> Option<&str> {
    path.strip_prefix("/api/v1/nodes/")?
        .strip_suffix("/booted")
        .filter(|n| !n.is_empty() && !n.contains('/'))
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"lazyboot\""),
    );
    r
}

/// Prometheus text exposition (see [`crate::metrics`]).
async fn metrics(State(fleet): State<Arc<crate::fleet::Fleet>>) -> Response {
    let ctx = &fleet.ctx;
    let mut g = ctx.images.gauges();
    let mut by_state: Vec<(&'static str, u64)> = crate::fleet::NodeState::ALL
        .iter()
        .map(|s| (s.as_str(), 0))
        .collect();
    for n in ctx.inventory.all() {
        let state = fleet.state_of(&n).as_str();
        if let Some(e) = by_state.iter_mut().find(|(s, _)| *s == state) {
            e.1 += 1;
        }
    }
    g.nodes = by_state;
    g.swaps = fleet.swaps_by_state();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&g),
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn booted(State(ctx): State<Arc<ServeContext>>, Path(name): Path<String>) -> Response {
    if ctx.inventory.by_name(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no node {name:?}"));
    }
    match ctx.recorder.booted(&name, BootedBy::Api) {
        Some(boot) => Json(json!({ "node": name, "boot": boot })).into_response(),
        None => error(
            StatusCode::CONFLICT,
            format!("node {name:?} has no boot in progress"),
        ),
    }
}

async fn profiles(State(ctx): State<Arc<ServeContext>>, Path(name): Path<String>) -> Response {
    if ctx.inventory.by_name(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no node {name:?}"));
    }
    Json(json!({ "node": name, "boots": ctx.recorder.store().boots(&name) })).into_response()
}

#[derive(Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

async fn profile(
    State(ctx): State<Arc<ServeContext>>,
    Path((name, boot)): Path<(String, String)>,
    Query(q): Query<FormatQuery>,
) -> Response {
    // Only names of the inventory reach the profile store: a name is never
    // joined onto a path unchecked.
    if ctx.inventory.by_name(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no node {name:?}"));
    }
    let boot = match boot.as_str() {
        "latest" => None,
        n => match n.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return error(StatusCode::BAD_REQUEST, format!("bad boot number {n:?}")),
        },
    };
    let p = match ctx.recorder.store().load(&name, boot) {
        Ok(p) => p,
        // The messages a client sees name no server path.
        Err(ProfileError::NoProfiles { node, .. }) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no boot profiles recorded for node {node:?}"),
            )
        }
        Err(e @ ProfileError::NoSuchBoot { .. }) => {
            return error(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => {
            tracing::warn!(node = %name, "profile unreadable: {e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the profile of node {name:?} could not be read (see the server log)"),
            );
        }
    };
    let (body, mime) = match q.format.as_deref().unwrap_or("json") {
        "json" => (
            serde_json::to_string_pretty(&json!({ "profile": &p, "summary": p.summary() }))
                .unwrap_or_default(),
            "application/json",
        ),
        "text" => (report::render_text(&p, 100), "text/plain; charset=utf-8"),
        "html" => (html::render_html(&p), "text/html; charset=utf-8"),
        "trace" => (html::render_trace(&p), "application/json"),
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown format {other:?} (json, text, html, trace)"),
            )
        }
    };
    ([(header::CONTENT_TYPE, mime)], body).into_response()
}
