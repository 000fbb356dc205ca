//! Model management over HTTP, as Ollama's API has it: `/api/pull` (NDJSON progress),
//! `/api/create`, `/api/copy`, `/api/delete`, and `HEAD`/`POST /api/blobs/:digest`.
//!
//! Requests from the network may name models and uploaded blobs, never server paths. An
//! upload streams to a partial file and becomes a blob only when its sha256 matches the digest
//! in the URL.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

use super::error::ApiError;
use super::extract::{JsonBody, PathParam};
use super::AppState;
use crate::store::modelfile::{self, CreateSpec};
use crate::store::pull::{self, Progress};
use crate::store::{digest_hex, StoreError};

fn ndjson(app: &AppState, lines: impl futures::Stream<Item = Value> + Send + 'static) -> Response {
    let cut = json!({ "error": "the server is shutting down; this operation is incomplete" });
    let body = app.lifecycle.until_shutdown(lines, cut).map(|v| {
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response()
}

fn progress_json(p: &Progress) -> Value {
    let mut v = json!({ "status": p.status });
    if let Some(d) = &p.digest {
        v["digest"] = json!(d);
    }
    if let Some(t) = p.total {
        v["total"] = json!(t);
    }
    if let Some(c) = p.completed {
        v["completed"] = json!(c);
    }
    v
}

#[derive(Deserialize)]
pub(super) struct PullRequest {
    model: Option<String>,
    name: Option<String>,
    /// hearth's own: the name to give a URL pull.
    #[serde(rename = "as")]
    as_name: Option<String>,
    stream: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)] // accepted from Ollama clients; hearth always verifies.
    insecure: Option<bool>,
}

pub(super) async fn pull(State(app): State<AppState>, JsonBody(req): JsonBody<PullRequest>) -> Response {
    let Some(source) = req.model.or(req.name).filter(|m| !m.is_empty()) else {
        return ApiError::bad_request("model is required").into_response();
    };
    let plan = match pull::plan(&source, req.as_name.as_deref()) {
        Ok(p) => p,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let manager = app.manager.clone();
    let limits = Arc::clone(&app.pull);
    let stream = req.stream.unwrap_or(true);
    // The pull runs in its own task and stops when the client goes away: the partial file
    // stays, and the next pull resumes it.
    let task = tokio::spawn(async move {
        let store = manager.store().clone();
        let settings = manager.defaults().clone();
        let budget = manager.limits().ram_budget;
        let progress_tx = tx.clone();
        let check = move |info: &crate::store::gguf::GgufInfo| {
            let need = crate::engine::estimate::estimate(info, &settings).total();
            (need > budget).then(|| format!("model needs about {} MiB of RAM, more than the budget of {} MiB", need >> 20, budget >> 20))
        };
        let work = pull::pull(&store, &plan, &limits, |p| drop(progress_tx.send(progress_json(&p))), check);
        let result = tokio::select! {
            r = work => r,
            () = tx.closed() => return,
        };
        if let Err(e) = result {
            let err = ApiError::from(e);
            let _ = tx.send(json!({ "error": err.message, "status_code": err.status.as_u16() }));
        }
    });
    if stream {
        let lines = async_stream_from(rx);
        return ndjson(&app, lines);
    }
    let mut last = None;
    while let Some(v) = rx.recv().await {
        last = Some(v);
    }
    let _ = task.await;
    match last {
        Some(v) if v.get("error").is_some() => {
            let status = v["status_code"].as_u64().and_then(|s| StatusCode::from_u16(s as u16).ok()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            ApiError { status, message: v["error"].as_str().unwrap_or("pull failed").to_string(), retry_after: None }.into_response()
        }
        Some(v) => Json(v).into_response(),
        None => ApiError::internal("pull ended without a result").into_response(),
    }
}

fn async_stream_from(rx: tokio::sync::mpsc::UnboundedReceiver<Value>) -> impl futures::Stream<Item = Value> + Send + 'static {
    tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|mut v| {
        if let Some(o) = v.as_object_mut() {
            o.remove("status_code");
        }
        v
    })
}

#[derive(Deserialize)]
pub(super) struct CreateRequest {
    model: Option<String>,
    name: Option<String>,
    from: Option<String>,
    /// File name -> blob digest; the `.gguf` among them is the weights.
    files: Option<Map<String, Value>>,
    adapters: Option<Map<String, Value>>,
    template: Option<String>,
    system: Option<String>,
    license: Option<Value>,
    parameters: Option<Map<String, Value>>,
    /// The older API: a whole Modelfile as text.
    modelfile: Option<String>,
    messages: Option<Vec<Value>>,
    quantize: Option<String>,
    stream: Option<bool>,
}

impl CreateRequest {
    fn spec(self) -> Result<(String, CreateSpec, bool), ApiError> {
        let name = self.model.or(self.name).filter(|n| !n.is_empty()).ok_or_else(|| ApiError::bad_request("model is required"))?;
        if self.quantize.is_some_and(|q| !q.is_empty()) {
            return Err(ApiError::bad_request("quantize is not supported by hearth; quantize with llama.cpp's llama-quantize"));
        }
        if self.messages.is_some_and(|m| !m.is_empty()) {
            return Err(ApiError::bad_request("messages are not supported by hearth's create"));
        }
        let mut spec = match self.modelfile.filter(|m| !m.trim().is_empty()) {
            Some(text) => modelfile::parse(&text)?,
            None => CreateSpec::default(),
        };
        let digests = |map: Option<Map<String, Value>>, what: &str| -> Result<Vec<(String, String)>, ApiError> {
            map.unwrap_or_default()
                .into_iter()
                .map(|(file, d)| match d.as_str() {
                    Some(d) => Ok((file, d.to_string())),
                    None => Err(ApiError::bad_request(format!("{what}: the digest of {file:?} must be a string"))),
                })
                .collect()
        };
        let files = digests(self.files, "files")?;
        if let Some(from) = self.from.filter(|f| !f.is_empty()) {
            spec.from = from;
        } else if let Some((_, d)) = files.iter().find(|(f, _)| f.ends_with(".gguf")).or(files.first()) {
            spec.from = d.clone();
        }
        if spec.from.is_empty() {
            return Err(ApiError::bad_request("from (a model name or blob) or files is required"));
        }
        spec.adapters.extend(digests(self.adapters, "adapters")?.into_iter().map(|(_, d)| d));
        if let Some(t) = self.template {
            spec.template = Some(t);
        }
        if let Some(s) = self.system {
            spec.system = Some(s);
        }
        match self.license {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => spec.license = Some(s),
            Some(Value::Array(items)) => {
                spec.license = Some(items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n\n"));
            }
            Some(_) => return Err(ApiError::bad_request("license must be a string or a list of strings")),
        }
        for (k, v) in self.parameters.unwrap_or_default() {
            spec.parameters.insert(k, v);
        }
        modelfile::check_parameters(&spec.parameters).map_err(|e| ApiError::bad_request(format!("parameters: {e}")))?;
        Ok((name, spec, self.stream.unwrap_or(true)))
    }
}

pub(super) async fn create(State(app): State<AppState>, JsonBody(req): JsonBody<CreateRequest>) -> Response {
    let (name, spec, stream) = match req.spec() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let manager = app.manager.clone();
    let name2 = name.clone();
    let result = tokio::task::spawn_blocking(move || manager.store().create(&name2, &spec, None)).await;
    let manifest = match result {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(e) => return ApiError::internal(format!("create failed: {e}")).into_response(),
    };
    // A loaded instance under this name may have other overrides now.
    app.manager.unload(&crate::store::normalize_name(&name).unwrap_or(name));
    let lines = vec![
        json!({ "status": format!("using existing layer {}", manifest.model) }),
        json!({ "status": "writing manifest" }),
        json!({ "status": "success" }),
    ];
    if stream {
        ndjson(&app, futures::stream::iter(lines))
    } else {
        Json(json!({ "status": "success" })).into_response()
    }
}

#[derive(Deserialize)]
pub(super) struct CopyRequest {
    source: Option<String>,
    destination: Option<String>,
}

pub(super) async fn copy(State(app): State<AppState>, JsonBody(req): JsonBody<CopyRequest>) -> Response {
    let (Some(source), Some(dest)) = (req.source.filter(|s| !s.is_empty()), req.destination.filter(|s| !s.is_empty())) else {
        return ApiError::bad_request("source and destination are required").into_response();
    };
    let manager = app.manager.clone();
    let result = tokio::task::spawn_blocking(move || manager.store().copy(&source, &dest)).await;
    match result {
        Ok(Ok(dest)) => {
            app.manager.unload(&dest);
            StatusCode::OK.into_response()
        }
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => ApiError::internal(format!("copy failed: {e}")).into_response(),
    }
}

#[derive(Deserialize)]
pub(super) struct DeleteRequest {
    model: Option<String>,
    name: Option<String>,
}

pub(super) async fn delete(State(app): State<AppState>, JsonBody(req): JsonBody<DeleteRequest>) -> Response {
    let Some(name) = req.model.or(req.name).filter(|n| !n.is_empty()) else {
        return ApiError::bad_request("model is required").into_response();
    };
    let manager = app.manager.clone();
    let result = tokio::task::spawn_blocking(move || manager.store().remove(&name)).await;
    match result {
        Ok(Ok(entry)) => {
            app.manager.unload(&entry.name);
            StatusCode::OK.into_response()
        }
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => ApiError::internal(format!("delete failed: {e}")).into_response(),
    }
}

pub async fn head_blob(State(app): State<AppState>, PathParam(digest): PathParam<String>) -> Response {
    match app.manager.store().has_blob(&digest) {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub async fn post_blob(State(app): State<AppState>, PathParam(digest): PathParam<String>, headers: axum::http::HeaderMap, body: Body) -> Response {
    match upload(&app, &digest, &headers, body).await {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn upload(app: &AppState, digest: &str, headers: &axum::http::HeaderMap, body: Body) -> Result<(), StoreError> {
    let hex = digest_hex(digest)?;
    let store = app.manager.store();
    if store.has_blob(digest)? {
        return Ok(());
    }
    let io = |source| StoreError::Io { dir: store.partial_dir().display().to_string(), source };
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let (Some(needed), Some(available)) = (length, store.free_space()) {
        if needed > available {
            return Err(StoreError::NoSpace { needed, available, dir: store.dir().display().to_string() });
        }
    }
    tokio::fs::create_dir_all(store.partial_dir()).await.map_err(io)?;
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = store.partial_dir().join(format!("upload-{}-{unique}.partial", &hex[..16]));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StoreError::Invalid(format!("upload interrupted: {e}")))?;
            sha2::Digest::update(&mut hasher, &chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        let actual = format!("sha256:{:x}", sha2::Digest::finalize(hasher));
        if actual != format!("sha256:{hex}") {
            return Err(StoreError::DigestMismatch { expected: digest.to_string(), actual });
        }
        store.commit_blob(&tmp, digest)?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}
