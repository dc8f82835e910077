//! The web UI (built from `ui/` by `build.rs`), embedded in the binary and served at `/`.
//! Page navigations (requests accepting `text/html`) to paths that are not files fall back
//! to `index.html` so the UI's own routes (`/outages`, `/traces/<id>`) load; other unknown
//! paths stay 404. The API, /metrics and health routes are matched before this fallback.
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use include_dir::{Dir, include_dir};

static UI: Dir<'static> = include_dir!("$OUT_DIR/ui");

/// The content type for a built asset, by extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "map") => "application/json",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Serves an embedded file, or `index.html` for anything that looks like a page route.
pub async fn serve(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let path = uri.path().trim_start_matches('/');
    // Unknown API paths stay JSON 404s; they are not pages.
    if path.starts_with("api/") {
        return crate::api::AppError::NotFound("no such endpoint".into()).into_response();
    }
    if let Some(file) = UI.get_file(path).filter(|_| !path.is_empty()) {
        // Vite names assets by content hash, so they never change under the same name.
        let cache = if path.starts_with("assets/") {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        return asset(file.contents(), content_type(path), cache);
    }
    // A missing asset is a 404, not the page (a browser would parse HTML as a script);
    // so is anything an API client (no `text/html` in Accept) asks for.
    let is_file =
        path.starts_with("assets/") || path.rsplit('/').next().is_some_and(|f| f.contains('.'));
    let wants_page = path.is_empty()
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"));
    if is_file || !wants_page {
        return crate::api::AppError::NotFound("no such endpoint".into()).into_response();
    }
    match UI.get_file("index.html") {
        Some(index) => asset(index.contents(), "text/html; charset=utf-8", "no-cache"),
        None => (
            StatusCode::NOT_FOUND,
            "the UI was not built into this binary\n",
        )
            .into_response(),
    }
}

fn asset(body: &'static [u8], content_type: &'static str, cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_assets_have_their_content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("assets/index-abc123.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type("assets/index-abc123.css"),
            "text/css; charset=utf-8"
        );
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }

    #[test]
    fn the_ui_is_embedded_with_its_scripts() {
        let index = UI.get_file("index.html").expect("index.html embedded");
        let html = std::str::from_utf8(index.contents()).expect("utf-8");
        assert!(html.contains("<script type=\"module\""), "{html}");
        let assets = UI.get_dir("assets").expect("assets/ embedded");
        assert!(
            assets
                .files()
                .any(|f| f.path().extension().is_some_and(|e| e == "js")),
            "no script in assets/"
        );
    }
}
