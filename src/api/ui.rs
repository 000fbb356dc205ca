//! The web page at `/ui`: plain HTML, CSS and JavaScript modules built into the binary
//! (`src/api/ui/`), so it works offline and nothing is fetched at run time. The files are
//! static and hold no data: they are served without an API key (the page asks for one and
//! sends it with each call to the API, which checks it as for any client). Each file goes out
//! with a strict Content-Security-Policy (this origin only, no inline script or style, no
//! framing), `nosniff` and no referrer.
//!
//! `/` answers a browser (one that asks for `text/html`) with a redirect here, and every other
//! client with Ollama's `Ollama is running`.
//!
//! Must not: serve anything but these files, or put data in them.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

/// The page's files: name, content type, content.
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("ui/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("ui/app.js")),
    ("chat.js", "text/javascript; charset=utf-8", include_str!("ui/chat.js")),
    ("models.js", "text/javascript; charset=utf-8", include_str!("ui/models.js")),
    ("live.js", "text/javascript; charset=utf-8", include_str!("ui/live.js")),
    ("markdown.js", "text/javascript; charset=utf-8", include_str!("ui/markdown.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("ui/app.css")),
    ("icon.svg", "image/svg+xml", include_str!("ui/icon.svg")),
];

/// This origin only, nothing inline (the scripts size the RAM bar through the CSSOM, which the
/// policy leaves alone).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new().route("/ui", get(index)).route("/ui/", get(index)).route("/ui/{file}", get(file))
}

/// Whether the UI's paths are asked for: they need no key.
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// A browser navigating: it asks for HTML by name (API clients send `*/*` or JSON).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.split(',').any(|t| t.trim().starts_with("text/html")))
}

/// `GET /`: the page for a browser, Ollama's greeting for everyone else.
pub async fn root(headers: HeaderMap) -> Response {
    if wants_html(&headers) {
        return Redirect::to("/ui").into_response();
    }
    "Ollama is running".into_response()
}

async fn index() -> Response {
    serve("index.html")
}

async fn file(Path(name): Path<String>) -> Response {
    serve(&name)
}

fn serve(name: &str) -> Response {
    let Some((_, kind, body)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return super::error::ApiError::not_found(format!("the page has no file {name:?}")).into_response();
    };
    let mut resp = (StatusCode::OK, *body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change only with the binary: revalidate rather than keep a stale page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_files_it_has() {
        let index = FILES[0].2;
        for (name, _, _) in FILES {
            if *name != "index.html" && !name.ends_with(".js") {
                assert!(index.contains(&format!("/ui/{name}")), "{name} is never linked");
            }
        }
        // Every module the scripts import is served.
        for (_, _, body) in FILES.iter().filter(|(n, _, _)| n.ends_with(".js")) {
            for import in body.match_indices("from \"./").map(|(i, _)| &body[i + 8..]) {
                let name = &import[..import.find('"').unwrap_or(0)];
                assert!(FILES.iter().any(|(n, _, _)| *n == name), "{name} is imported but not served");
            }
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_for_the_policy_to_block() {
        let index = FILES[0].2;
        assert!(!index.contains("<script>") && !index.contains("<style") && !index.contains(" style="), "inline code in index.html");
        // No handler attributes (onclick=...): the scripts add their listeners.
        let handler = index.match_indices(" on").any(|(i, _)| index[i + 3..].chars().take_while(char::is_ascii_lowercase).count() > 0 && index[i + 3..].trim_start_matches(|c: char| c.is_ascii_lowercase()).starts_with('='));
        assert!(!handler, "an inline handler in index.html");
    }

    #[test]
    fn a_browser_is_told_apart_from_an_api_client() {
        let mut h = HeaderMap::new();
        assert!(!wants_html(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!wants_html(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"));
        assert!(wants_html(&h));
    }
}
