//! The fleet's routes (see `crate::fleet`); every body is JSON, every error
//! `{"error": "..."}` with a 4xx status that says whose mistake it is.
//!
//! - `GET /api/v1/nodes`, `GET /api/v1/nodes/NAME`: each node's inventory
//!   entry, state, assigned image and digest, latest boot.
//! - `PUT /api/v1/nodes/NAME` `{"image"?: REF, "group"?: NAME|null}`: assign
//!   at run time (taken at the node's next boot).
//! - `GET /api/v1/groups`, `GET /api/v1/groups/NAME`: the groups, their
//!   policy and members; `PUT /api/v1/groups/NAME` `{"follow"?,
//!   "poll_secs"?, "max_unavailable"?, "boot_timeout_secs"?,
//!   "hook_timeout_secs"?, "keep_upper"?}` (never the reboot command).
//! - `GET /api/v1/images`: the references nodes boot now.
//! - `GET /api/v1/swaps`, `POST /api/v1/swaps` `{"node"|"group", "image",
//!   "max_unavailable"?}`, `GET /api/v1/swaps/ID`,
//!   `POST /api/v1/swaps/ID/cancel`.

use super::error;
use crate::fleet::{Fleet, FleetError, SwapRequest};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub(crate) fn routes(fleet: Arc<Fleet>) -> Router {
    Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{name}", get(node).put(set_node))
        .route("/api/v1/groups", get(groups))
        .route("/api/v1/groups/{name}", get(group).put(set_group))
        .route("/api/v1/images", get(images))
        .route("/api/v1/swaps", get(swaps).post(start_swap))
        .route("/api/v1/swaps/{id}", get(swap))
        .route("/api/v1/swaps/{id}/cancel", post(cancel))
        .with_state(fleet)
}

fn fleet_error(e: FleetError) -> Response {
    let status = match &e {
        FleetError::NoNode(_) | FleetError::NoGroup(_) | FleetError::NoSwap(_) => {
            StatusCode::NOT_FOUND
        }
        FleetError::Busy { .. } | FleetError::Ended(_) => StatusCode::CONFLICT,
        FleetError::Db(_) => {
            tracing::error!("{e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the fleet database could not be written (see the server log)",
            );
        }
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, e.to_string())
}

/// A body that is not the JSON the route takes: 400 with serde's reason.
fn bad_json(e: JsonRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("bad JSON body: {}", e.body_text()),
    )
}

async fn nodes(State(f): State<Arc<Fleet>>) -> Response {
    let list: Vec<_> = f
        .ctx
        .inventory
        .all()
        .iter()
        .map(|n| f.node_json(n))
        .collect();
    Json(list).into_response()
}

async fn node(State(f): State<Arc<Fleet>>, Path(name): Path<String>) -> Response {
    let Some(n) = f.ctx.inventory.by_name(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no node {name:?}"));
    };
    Json(f.node_json(&n)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetNode {
    image: Option<String>,
    /// Absent: unchanged; null: no group.
    #[serde(default, deserialize_with = "some")]
    group: Option<Option<String>>,
}

fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

async fn set_node(
    State(f): State<Arc<Fleet>>,
    Path(name): Path<String>,
    body: Result<Json<SetNode>, JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    if b.image.is_none() && b.group.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "nothing to change: give \"image\" and/or \"group\"",
        );
    }
    match f.set_node(&name, b.image, b.group) {
        Ok(()) => node(State(f), Path(name)).await,
        Err(e) => fleet_error(e),
    }
}

fn group_json(f: &Fleet, name: &str) -> Option<serde_json::Value> {
    let p = f.group_policy(name)?;
    Some(json!({
        "name": name,
        "follow": p.follow,
        "poll_secs": p.poll.as_secs(),
        "reboot": p.reboot,
        "max_unavailable": p.max_unavailable,
        "boot_timeout_secs": p.boot_timeout.as_secs(),
        "hook_timeout_secs": p.hook_timeout.as_secs(),
        "keep_upper": p.keep_upper,
        "nodes": f.members(name).iter().map(|n| n.name.clone()).collect::<Vec<_>>(),
    }))
}

async fn groups(State(f): State<Arc<Fleet>>) -> Response {
    let list: Vec<_> = f
        .ctx
        .config
        .groups
        .iter()
        .filter_map(|g| group_json(&f, g.name.get_ref()))
        .collect();
    Json(list).into_response()
}

async fn group(State(f): State<Arc<Fleet>>, Path(name): Path<String>) -> Response {
    match group_json(&f, &name) {
        Some(g) => Json(g).into_response(),
        None => fleet_error(FleetError::NoGroup(name)),
    }
}

/// `reboot` is refused: see `fleet::groups`.
async fn set_group(
    State(f): State<Arc<Fleet>>,
    Path(name): Path<String>,
    body: Result<Json<crate::fleet::groups::GroupChange>, JsonRejection>,
) -> Response {
    let Json(change) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    match f.set_group(&name, change) {
        Ok(()) => group(State(f), Path(name)).await,
        Err(e) => fleet_error(e),
    }
}

async fn images(State(f): State<Arc<Fleet>>) -> Response {
    let mut by_image: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for n in f.ctx.inventory.all() {
        by_image
            .entry(n.image.clone())
            .or_default()
            .push(n.name.clone());
    }
    let list: Vec<_> = by_image
        .into_iter()
        .map(|(image, nodes)| json!({ "image": image, "nodes": nodes }))
        .collect();
    Json(list).into_response()
}

async fn swaps(State(f): State<Arc<Fleet>>) -> Response {
    let list: Vec<_> = f.swaps().iter().map(swap_json).collect();
    Json(json!({ "swaps": list })).into_response()
}

fn swap_json(s: &crate::fleet::model::SwapRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["done"] = json!(s.done());
    v["total"] = json!(s.nodes.len());
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartSwap {
    node: Option<String>,
    group: Option<String>,
    image: String,
    max_unavailable: Option<usize>,
}

async fn start_swap(
    State(f): State<Arc<Fleet>>,
    body: Result<Json<StartSwap>, JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let req = SwapRequest {
        node: b.node,
        group: b.group,
        image: b.image,
        max_unavailable: b.max_unavailable,
        followed: false,
        only: None,
    };
    match f.start_swap(req) {
        Ok(id) => {
            let s = f.swap(id).expect("just recorded");
            (StatusCode::ACCEPTED, Json(swap_json(&s))).into_response()
        }
        Err(e) => fleet_error(e),
    }
}

fn swap_id(id: &str) -> Option<u64> {
    id.parse().ok()
}

fn bad_swap_id(id: &str) -> Response {
    error(StatusCode::BAD_REQUEST, format!("bad swap id {id:?}"))
}

async fn swap(State(f): State<Arc<Fleet>>, Path(id): Path<String>) -> Response {
    let Some(id) = swap_id(&id) else {
        return bad_swap_id(&id);
    };
    match f.swap(id) {
        Some(s) => Json(swap_json(&s)).into_response(),
        None => fleet_error(FleetError::NoSwap(id)),
    }
}

async fn cancel(State(f): State<Arc<Fleet>>, Path(id): Path<String>) -> Response {
    let Some(id) = swap_id(&id) else {
        return bad_swap_id(&id);
    };
    match f.cancel(id) {
        Ok(()) => {
            let s = f.swap(id).expect("exists");
            (StatusCode::ACCEPTED, Json(swap_json(&s))).into_response()
        }
        Err(e) => fleet_error(e),
    }
}
