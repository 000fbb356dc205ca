//! API keys at the HTTP edge: with no keys configured nothing asks for one (a loopback server,
//! as before); once keys exist, every route but `/health` needs one.
//!
//! - The key comes as `Authorization: Bearer <key>` (what the OpenAI and Ollama clients send)
//!   or `x-api-key: <key>` (Anthropic's clients). It is looked up by its SHA-256; the key
//!   itself is never stored or logged.
//! - Each route needs one scope ([`required_scope`]); a path this table does not know needs
//!   `admin`, so a new route is closed until someone decides otherwise.
//! - Routes that do work (generate, embed) spend the key's rate limits; a key past a limit gets
//!   429 with `Retry-After`.
//! - No key: 401 with `WWW-Authenticate: Bearer`; an unknown key: 401; a key without the
//!   scope: 403. All JSON in the API's shape.
//!
//! The account travels in the request's extensions ([`Key`]), so the service counts the
//! answer's tokens on it. Must not: read bodies; answer differently for a wrong key and a
//! missing one beyond the message.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::AppState;
use crate::service::accounts::{key_hash, Account, KeySpec, Scope};
use crate::service::shared_limits::SharedLimits;

/// The configured keys, replaced whole on a config reload.
#[derive(Default)]
pub struct Keys {
    table: RwLock<Arc<HashMap<[u8; 32], Arc<Account>>>>,
    /// Where the keys' rate limits are counted when several servers share them (Redis).
    shared: Option<Arc<SharedLimits>>,
    /// Where their usage is counted for every server (a PostgreSQL conversation store).
    ledger: Option<crate::conversations::ConversationStore>,
}

impl Keys {
    #[cfg(test)]
    pub fn new(specs: &[KeySpec], shared: Option<Arc<SharedLimits>>) -> Keys {
        Keys::counted(specs, shared, None)
    }

    /// Keys whose usage is also counted in `ledger` (shared with other servers).
    pub fn counted(specs: &[KeySpec], shared: Option<Arc<SharedLimits>>, ledger: Option<crate::conversations::ConversationStore>) -> Keys {
        let keys = Keys { shared, ledger, ..Keys::default() };
        keys.replace(specs);
        keys
    }

    /// Installs a new set of keys; a key whose name and hash are unchanged keeps its usage and
    /// (when its limits are the same) its buckets.
    pub fn replace(&self, specs: &[KeySpec]) {
        let now = Instant::now();
        let old = self.snapshot();
        let table = specs
            .iter()
            .map(|spec| {
                let account = match old.get(&spec.sha256).filter(|a| a.name == spec.name) {
                    Some(a) => a.carried_over(spec, now),
                    None => Account::new(spec, now).sharing(self.shared.clone()).counted_in(self.ledger.clone()),
                };
                (spec.sha256, Arc::new(account))
            })
            .collect();
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    }

    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    pub fn find(&self, key: &str) -> Option<Arc<Account>> {
        self.snapshot().get(&key_hash(key)).cloned()
    }

    /// Every account, by name.
    pub fn accounts(&self) -> Vec<Arc<Account>> {
        let mut all: Vec<_> = self.snapshot().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn snapshot(&self) -> Arc<HashMap<[u8; 32], Arc<Account>>> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// What a route needs: nothing, any valid key, or a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Nothing,
    AnyKey,
    Scope(Scope),
}

/// The scope each route needs. Unknown paths need `admin`.
pub fn required_scope(method: &Method, path: &str) -> Need {
    use Scope::*;
    let scope = match path {
        "/health" => return Need::Nothing,
        // The page's static files: no data in them; the page sends the key with its calls.
        p if super::ui::is_ui_path(p) && (method == Method::GET || method == Method::HEAD) => return Need::Nothing,
        "/" | "/api/version" | "/api/usage" => return Need::AnyKey,
        "/api/generate" | "/api/chat" | "/v1/chat/completions" | "/v1/completions" | "/generate" | "/llm/generate" => Generate,
        "/api/templates" | "/api/templates/render" | "/api/personas" | "/api/conversations" => Generate,
        "/v1/messages" | "/v1/messages/count_tokens" | "/v1/responses" => Generate,
        p if p.starts_with("/v1/responses/") => Generate,
        "/api/tokenize" | "/api/detokenize" | "/api/apply-template" | "/tokenize" | "/detokenize" | "/apply-template" => Generate,
        p if p.starts_with("/api/conversations/") => Generate,
        "/api/embed" | "/api/embeddings" | "/v1/embeddings" => Embed,
        "/api/tags" | "/api/show" | "/api/ps" | "/v1/models" => ModelsRead,
        // It measures the model's decode speed: work, like a generation.
        "/validate-model" => Generate,
        p if p.starts_with("/v1/models/") => ModelsRead,
        "/api/pull" | "/api/create" | "/api/copy" | "/api/delete" => ModelsWrite,
        p if p.starts_with("/api/blobs/") => ModelsWrite,
        "/metrics" | "/api/metrics" | "/api/routes" => Metrics,
        // Feedback on an answer comes from whoever asked for it.
        "/api/feedback" => Generate,
        _ => Admin,
    };
    // A preflight carries no key; the CORS layer outside this one answers it.
    if method == Method::OPTIONS {
        return Need::AnyKey;
    }
    Need::Scope(scope)
}

/// The header that keeps a client on one variant of a split route (a session, a user).
pub const STICKY_HEADER: &str = "x-hearth-sticky";

/// Who is asking, for handlers: the key's account (`None` on a server without keys), and the
/// client's sticky key for split routes (`X-Hearth-Sticky`), if it sent one.
#[derive(Clone, Default)]
pub struct Key(pub Option<Arc<Account>>, pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Key, Self::Rejection> {
        let sticky = parts.headers.get(STICKY_HEADER).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty()).map(|v| v.chars().take(256).collect());
        Ok(Key(parts.extensions.get::<Arc<Account>>().cloned(), sticky))
    }
}

/// The presented key, from `Authorization: Bearer` or `x-api-key`.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, key) = value.trim().split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() {
            return Some(key.trim());
        }
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty())
}

/// The middleware: authenticates, checks the scope, spends the rate limit, and hands the
/// account on. A server without keys lets everything through.
pub async fn authorize(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    if app.keys.is_empty() {
        return next.run(req).await;
    }
    let need = match (req.method(), req.uri().path()) {
        // A browser opening the server is sent to the page (which asks for the key).
        (&Method::GET, "/") if super::ui::wants_html(req.headers()) => Need::Nothing,
        (method, path) => required_scope(method, path),
    };
    if need == Need::Nothing {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let Some(key) = presented(req.headers()) else {
        return unauthorized(&path, "this server needs an API key: send it as Authorization: Bearer <key> (or x-api-key)");
    };
    let Some(account) = app.keys.find(key) else {
        return unauthorized(&path, "the API key is not valid");
    };
    if let Need::Scope(scope) = need {
        if !account.allows(scope) {
            let message = format!("key {:?} lacks the {scope} scope, which {} {} needs", account.name, req.method(), shown_path(&path));
            return refuse(&path, StatusCode::FORBIDDEN, message, None);
        }
        if matches!(scope, Scope::Generate | Scope::Embed) && spends_limits(req.method(), &path) {
            if let Err(refusal) = account.admit_anywhere().await {
                app.service.metrics.record_key_request(&account.name, "limited");
                let message = format!("key {:?} is past its {}; retry in {} s", account.name, refusal.limit, refusal.retry_after_secs());
                return refuse(&path, StatusCode::TOO_MANY_REQUESTS, message, Some(refusal.retry_after_secs()));
            }
            app.service.metrics.record_key_request(&account.name, "admitted");
        }
    }
    req.extensions_mut().insert(account);
    next.run(req).await
}

/// The routes that start work: listing templates or conversations does not spend a request.
fn spends_limits(method: &Method, path: &str) -> bool {
    method == Method::POST && !matches!(path, "/api/templates/render")
}

fn unauthorized(path: &str, message: &str) -> Response {
    let mut resp = refuse(path, StatusCode::UNAUTHORIZED, message.to_string(), None);
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

fn refuse(path: &str, status: StatusCode, message: String, retry_after: Option<u64>) -> Response {
    super::in_shape_for(path, ApiError { status, message, retry_after })
}

fn shown_path(path: &str) -> String {
    path.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_scope_and_unknown_paths_need_admin() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(required_scope(&get, "/health"), Need::Nothing);
        assert_eq!(required_scope(&get, "/api/version"), Need::AnyKey);
        assert_eq!(required_scope(&post, "/api/chat"), Need::Scope(Scope::Generate));
        assert_eq!(required_scope(&Method::DELETE, "/api/conversations/abc"), Need::Scope(Scope::Generate));
        assert_eq!(required_scope(&post, "/v1/embeddings"), Need::Scope(Scope::Embed));
        assert_eq!(required_scope(&get, "/v1/models/smollm2:135m"), Need::Scope(Scope::ModelsRead));
        assert_eq!(required_scope(&post, "/api/blobs/sha256:00"), Need::Scope(Scope::ModelsWrite));
        assert_eq!(required_scope(&Method::DELETE, "/api/delete"), Need::Scope(Scope::ModelsWrite));
        assert_eq!(required_scope(&get, "/metrics"), Need::Scope(Scope::Metrics));
        assert_eq!(required_scope(&post, "/api/config/reload"), Need::Scope(Scope::Admin));
        assert_eq!(required_scope(&post, "/llm/configure"), Need::Scope(Scope::Admin));
        assert_eq!(required_scope(&get, "/api/new-route"), Need::Scope(Scope::Admin));
    }

    #[test]
    fn keys_come_as_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented(&h), None);
        h.insert("x-api-key", HeaderValue::from_static(" k2 "));
        assert_eq!(presented(&h), Some("k2"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  k1"));
        assert_eq!(presented(&h), Some("k1"));
    }

    #[test]
    fn a_reload_keeps_the_usage_of_unchanged_keys() {
        let spec = |name: &str, key: &str| KeySpec { name: name.into(), sha256: key_hash(key), scopes: vec![Scope::Generate], limits: Default::default() };
        let keys = Keys::new(&[spec("a", "ka"), spec("b", "kb")], None);
        keys.find("ka").expect("a").record(10, 5, 0.0, Instant::now());
        keys.replace(&[spec("a", "ka"), spec("c", "kb")]);
        assert_eq!(keys.find("ka").expect("a kept").usage().prompt_tokens, 10);
        let c = keys.find("kb").expect("renamed key");
        assert_eq!((c.name.as_str(), c.usage().prompt_tokens), ("c", 0));
        assert!(keys.find("nope").is_none());
        assert_eq!(keys.accounts().len(), 2);
    }
}
