//! `hearth stdio MODEL`: JSON lines in, JSON lines out, one loaded model, no HTTP.
//!
//! Each input line is an Ollama generate request, or a chat request when it has `messages`;
//! `model` defaults to MODEL. Each output line is an Ollama response object. `stream`
//! defaults to false here (one line per request, the easy case for scripts); with
//! `stream: true` the chunks follow each other, ending with the `done: true` object.
//! Requests run in order. A bad line gets an `{"error": ...}` line and the loop goes on.

#![allow(clippy::print_stdout)] // stdio mode: stdout carries the protocol.

use std::io::Write;
use std::time::Instant;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use crate::api::error::ApiError;
use crate::api::ollama::{self, ChatRequest, GenerateRequest, Kind, Reply};
use crate::cli::StdioArgs;
use crate::cache::ResponseCache;
use crate::conversations::ConversationStore;
use crate::metrics::Metrics;
use crate::service::{Caller, Service};

pub async fn run(args: StdioArgs) -> anyhow::Result<()> {
    // One process, one user: the model stays loaded unless --keep-alive says otherwise.
    let mut engine = args.engine.clone();
    engine.keep_alive.get_or_insert_with(|| "-1".to_string());
    let manager = super::manager(super::open_store(&args.store), &engine)?;
    let router = super::router()?;
    // Load up front so the first request doesn't pay for it and a bad model fails at once (a
    // provider's model or a route has nothing to load here). The lease ends here: held, it
    // would keep this instance alive after a request with a larger num_ctx replaced it.
    let table = router.table();
    if table.remote(&args.model).is_none() && !table.routes.contains_key(&args.model) {
        drop(manager.acquire(manager.store().resolve_name_or_path(&args.model)?, None, None).await?);
    }
    // Scripts continue conversations by `conversation_id`, as HTTP clients do.
    let conversations = match ConversationStore::open(&super::default_data_dir()) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("conversations are off: {e}");
            None
        }
    };
    let service = Service::new(
        manager,
        ResponseCache::disabled(),
        conversations,
        Metrics::new(Default::default()),
        Default::default(),
        Default::default(),
    )
    .with_router(router);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        match handle(&service, &args.model, &line).await {
            Ok(()) => {}
            Err(e) => emit(&e.body())?,
        }
    }
    Ok(())
}

fn emit(v: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()
}

async fn handle(service: &Service, default_model: &str, line: &str) -> Result<(), ApiError> {
    let started = Instant::now();
    let mut v: Value = ollama::parse_body(line.as_bytes())?;
    let Some(obj) = v.as_object_mut() else {
        return Err(ApiError::bad_request("each line must be a JSON object"));
    };
    obj.entry("model").or_insert_with(|| json!(default_model));
    obj.entry("stream").or_insert(json!(false));
    let (req, kind) = if obj.contains_key("messages") {
        let r: ChatRequest = serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
        (r.validate()?, Kind::Chat)
    } else {
        let r: GenerateRequest = serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
        (r.validate()?, Kind::Generate)
    };
    let model = req.model.clone();
    match ollama::run(service, req, kind, Caller::Local, started).await? {
        Reply::One(v, _) => emit(&v).map_err(|e| ApiError::internal(e.to_string()))?,
        Reply::Stream(g, tools) => {
            let mut s = Box::pin(ollama::response_stream(g, kind, model, tools));
            while let Some(v) = s.next().await {
                emit(&v).map_err(|e| ApiError::internal(e.to_string()))?;
            }
        }
    }
    Ok(())
}
