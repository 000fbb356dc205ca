//! Who may drive the server from a web browser. A page the user opens must not be able to
//! generate, read conversations, pull or delete models, as it could before (a `text/plain`
//! POST needs no preflight, and a rebound DNS name reaches a loopback server as same-origin).
//!
//! - A request with an `Origin` outside the allow list is refused (403) before any work. The
//!   list is Ollama's defaults (loopback origins on any port and the app schemes local clients
//!   use) plus `server.origins` / `HEARTH_ORIGINS`; `*` allows every origin. Clients that send
//!   no `Origin` (curl, the SDKs, scripts) are not affected. The server's own page (`/ui`) is
//!   same-origin: an `Origin` naming the request's own `Host` is allowed when that host is an
//!   IP address or a loopback name (a DNS name could be rebound, so it goes in the list).
//! - Allowed origins get CORS answers (tower-http's layer): preflights, and the headers that
//!   let the page read the response. Never with credentials: hearth sets no cookies.
//! - On a loopback bind, a `Host` that is not a loopback name or address is refused (403): that
//!   is a page on a rebound name (CVE-2024-28224), as a loopback server has no other names.
//!
//! Refusals are JSON in the API's shape (OpenAI's under `/v1/`). Must not: look at bodies,
//! keys or models; it decides from the request line and headers alone.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use super::error::ApiError;

/// Origins allowed whatever the config says, as Ollama's: loopback pages on any port, and the
/// schemes of desktop apps, editors and local files.
const DEFAULT_ORIGINS: &[&str] = &[
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://[::1]",
    "https://[::1]",
    "http://[::1]:*",
    "https://[::1]:*",
    "http://0.0.0.0",
    "https://0.0.0.0",
    "http://0.0.0.0:*",
    "https://0.0.0.0:*",
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
];

/// The server's browser policy: which origins, and whether `Host` is checked.
#[derive(Debug, Clone)]
pub struct Guard {
    origins: Vec<String>,
    /// Bound to a loopback address: only loopback names may appear in `Host`.
    loopback_hosts_only: bool,
}

impl Default for Guard {
    /// Ollama's default origins, on a loopback bind.
    fn default() -> Self {
        Guard::new(&[], true)
    }
}

impl Guard {
    /// The default origins plus `extra` (patterns where `*` stands for any text, and a final
    /// `:*` for any port).
    pub fn new(extra: &[String], loopback_bind: bool) -> Guard {
        let origins = DEFAULT_ORIGINS
            .iter()
            .map(|o| o.to_string())
            .chain(extra.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()))
            .filter(|o| !o.is_empty())
            .collect();
        Guard { origins, loopback_hosts_only: loopback_bind }
    }

    /// Whether a page from `origin` may use the API.
    pub fn allows_origin(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.origins.iter().any(|pattern| origin_matches(pattern, &origin))
    }

    /// Whether a request with this `Host` header may be served (always, off loopback).
    pub fn allows_host(&self, host: &str) -> bool {
        !self.loopback_hosts_only || is_loopback_host(host)
    }

    /// CORS for the allowed origins: preflights answered, responses readable.
    pub fn cors(self: &Arc<Self>) -> CorsLayer {
        let guard = Arc::clone(self);
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
                origin.to_str().is_ok_and(|o| guard.allows_origin(o))
            }))
            .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::DELETE])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([
                header::HeaderName::from_static(super::CACHE_HEADER),
                header::HeaderName::from_static("x-request-id"),
                header::HeaderName::from_static("x-hearth-dropped-messages"),
                header::HeaderName::from_static(super::TARGET_HEADER),
                header::HeaderName::from_static(super::ROUTE_HEADER),
            ])
            .max_age(Duration::from_secs(3600))
    }
}

/// The middleware: refuses a bad `Host` or `Origin` with 403 before anything else runs.
pub async fn guard(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if let Some(host) = headers.get(header::HOST) {
        let allowed = host.to_str().is_ok_and(|h| guard.allows_host(h));
        if !allowed {
            return refuse(
                req.uri().path(),
                format!(
                    "host {} is not allowed: this server listens on loopback and answers only to loopback names (localhost, 127.0.0.1, [::1])",
                    shown(host)
                ),
            );
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let allowed = origin.to_str().is_ok_and(|o| guard.allows_origin(o) || host.is_some_and(|h| same_origin(o, h)));
        if !allowed {
            return refuse(
                req.uri().path(),
                format!(
                    "origin {} is not allowed: add it to server.origins in the config file or to HEARTH_ORIGINS",
                    shown(origin)
                ),
            );
        }
    }
    next.run(req).await
}

/// The page this server served itself (`/ui`) calling it: the origin is this very host and
/// port, and the host is an IP address or a loopback name. A DNS name is left to the allow
/// list: a page on a name rebound to this server's address would be "same-origin" too.
fn same_origin(origin: &str, host: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    let host = host.trim().to_ascii_lowercase();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host.as_str(), |(n, _)| n),
    };
    let literal = name.parse::<IpAddr>().is_ok() || is_loopback_host(&host);
    literal && origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")).is_some_and(|o| o == host)
}

fn refuse(path: &str, message: String) -> Response {
    super::in_shape_for(path, ApiError { status: axum::http::StatusCode::FORBIDDEN, message, retry_after: None })
}

/// A header value as it may be quoted in an answer: printable, and short.
fn shown(value: &HeaderValue) -> String {
    let text = String::from_utf8_lossy(value.as_bytes());
    let short: String = text.chars().take(80).filter(|c| !c.is_control()).collect();
    format!("{short:?}")
}

/// `*` matches any text; a pattern ending in `:*` matches only a numeric port there.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(base) = pattern.strip_suffix(":*") {
        if let Some((head, port)) = origin.rsplit_once(':') {
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && glob(base, head) {
                return true;
            }
        }
        return false;
    }
    glob(pattern, origin)
}

/// Whole-string match where each `*` in `pattern` stands for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// `localhost`, `*.localhost`, a 127/8 address or `::1`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let name = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host.as_str(),
        }
    };
    let name = name.trim_end_matches('.');
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollamas_default_origins_and_no_others() {
        let g = Guard::default();
        for ok in ["http://localhost", "http://localhost:3000", "https://127.0.0.1:8443", "http://[::1]:80", "app://obsidian.md", "vscode-webview://abc", "file://"] {
            assert!(g.allows_origin(ok), "{ok}");
        }
        for bad in ["http://evil.example", "null", "http://localhost.evil.example", "http://localhost:3000.evil.example", "http://127.0.0.1.nip.io", "https://localhost:"] {
            assert!(!g.allows_origin(bad), "{bad}");
        }
    }

    #[test]
    fn configured_origins_add_to_the_defaults() {
        let g = Guard::new(&["https://app.example/".into(), "https://*.corp.example".into()], true);
        assert!(g.allows_origin("https://app.example") && g.allows_origin("https://chat.corp.example"));
        assert!(g.allows_origin("http://localhost:5173"));
        assert!(!g.allows_origin("https://app.example.evil") && !g.allows_origin("https://corp.example"));
        assert!(Guard::new(&["*".into()], true).allows_origin("https://anything.example"));
    }

    #[test]
    fn loopback_binds_answer_only_to_loopback_names() {
        let g = Guard::default();
        for ok in ["localhost", "localhost:11434", "127.0.0.1:11434", "127.1.2.3", "[::1]:11434", "api.localhost:8080", "LOCALHOST."] {
            assert!(g.allows_host(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:11434", "192.168.1.5:11434", "localhost.evil.example", "[::2]:11434", "0.0.0.0:11434"] {
            assert!(!g.allows_host(bad), "{bad}");
        }
        assert!(Guard::new(&[], false).allows_host("my-server.lan:11434"));
    }

    #[test]
    fn the_servers_own_page_is_same_origin_only_on_an_address() {
        assert!(same_origin("http://10.0.0.5:11434", "10.0.0.5:11434"));
        assert!(same_origin("http://[fe80::1]:11434", "[fe80::1]:11434"));
        assert!(same_origin("http://localhost:11434", "localhost:11434"));
        assert!(!same_origin("http://10.0.0.5:11435", "10.0.0.5:11434"), "another port");
        assert!(!same_origin("http://box.example:11434", "box.example:11434"), "a name could be rebound");
        assert!(!same_origin("http://10.0.0.5:11434.evil", "10.0.0.5:11434"));
    }
}
