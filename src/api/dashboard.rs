//! The fleet dashboard at `/` (and `/index.html`): one static page, HTML,
//! CSS and script compiled into the binary, that polls the read-only API
//! (`/api/v1/nodes`, `/api/v1/swaps`) from the browser.
//!
//! The page carries no data, so it is served outside the API's access
//! guard: a browser outside `server.api_readers` still gets the page, and
//! the page tells it why its API reads are refused and how to get access.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The page; its `<script src="app.js">` tag is replaced by the script
/// itself, so the file still opens on its own in a browser while editing.
const HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const SCRIPT_TAG: &str = "<script src=\"app.js\"></script>";

struct Page {
    html: String,
    /// Allows only this page's own inline script (by hash), requests to
    /// this server, and frames of it (the boot waterfall).
    csp: String,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    // A script containing a closing tag would end the inline element early.
    debug_assert!(!APP_JS.contains("</script"));
    let script = format!("\n{APP_JS}");
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&script));
    Page {
        html: HTML.replacen(SCRIPT_TAG, &format!("<script>{script}</script>"), 1),
        csp: format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; frame-src 'self'; img-src 'self' data:; base-uri 'none'; \
             form-action 'none'"
        ),
    }
});

/// The dashboard's routes; merged after the API's guard layer (see the
/// module comment), for any router state.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
}

pub(crate) async fn page() -> Response {
    let p = &*PAGE;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, p.csp.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        p.html.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_inlined_and_nothing_is_loaded_from_elsewhere() {
        let p = &*PAGE;
        assert!(HTML.contains(SCRIPT_TAG), "the marker tag is gone");
        assert!(!p.html.contains(SCRIPT_TAG));
        assert!(p.html.contains("function refresh"));
        assert_eq!(p.html.matches("<script").count(), 1);
        for external in ["http://", "https://", "src=\"//", "@import"] {
            assert!(!p.html.contains(external), "{external} in the page");
        }
        assert!(p.csp.contains("script-src 'sha256-"));
    }

    #[test]
    fn data_reaches_the_page_only_as_text() {
        // Node names, images and messages are inserted with textContent:
        // no HTML parsing of anything the API returns.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!APP_JS.contains(sink), "{sink} in app.js");
        }
    }
}
