//! `POST /v1/chat/completions`: one or `n` choices, as one object or as SSE chunks, with tool
//! calls and usage.

use super::*;

pub(super) async fn chat_completions(State(app): State<AppState>, Key(account, sticky): Key, OpenAiJson(req): OpenAiJson<ChatCompletionRequest>) -> OaiResult<Response> {
    let started = Instant::now();
    let (plan, mut req) = req.validate()?;
    req.service.account = account;
    req.service.sticky = sticky.or(req.service.sticky);
    let tools = req.tools.clone();
    let generations = start_choices(&app, req, plan.n, started).await?;
    let info = combined_info(&generations);
    let id = new_id("chatcmpl");
    let created = unix_now();
    let model = plan.model.clone();
    if plan.stream {
        let mut resp = chat_stream(&app, generations, id, created, model.clone(), tools, plan.include_usage);
        crate::api::mark(&mut resp, &model, Some(&info));
        return Ok(resp);
    }
    let results = futures::future::join_all(generations.into_iter().map(|g| finish(g, tools.clone()))).await;
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens, mut cached_tokens) = (0, 0, 0);
    for (index, r) in results.into_iter().enumerate() {
        let f = r?;
        prompt_tokens = f.completion.prompt_tokens;
        cached_tokens = cached_tokens.max(f.completion.cached_tokens);
        completion_tokens += f.completion.eval_tokens;
        let (message, reason) = match f.tool_call {
            Some((name, args)) => (json!({ "role": "assistant", "content": null, "tool_calls": [tool_call_json(&name, &args)] }), "tool_calls"),
            None => (json!({ "role": "assistant", "content": f.text }), finish_reason(f.completion.reason)),
        };
        let logprobs = if f.logprobs.is_empty() { Value::Null } else { chat_logprobs(&f.logprobs) };
        choices.push(json!({ "index": index, "message": message, "logprobs": logprobs, "finish_reason": reason }));
    }
    let mut body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint(),
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    });
    // Prompt tokens whose KV was reused from an earlier turn (prefix reuse).
    body["usage"]["prompt_tokens_details"] = json!({ "cached_tokens": cached_tokens });
    crate::api::ollama::annotate(&mut body, &info);
    let mut resp = Json(body).into_response();
    crate::api::mark(&mut resp, &model, Some(&info));
    Ok(resp)
}

/// The service layer's report for all choices: a hit only if every choice hit.
pub(super) fn combined_info(generations: &[Generation]) -> crate::service::ResponseInfo {
    let mut info = generations.first().map(|g| g.info.clone()).unwrap_or_default();
    if generations.iter().any(|g| g.info.cache != crate::service::CacheResult::Hit) {
        info.cache = crate::service::CacheResult::Miss;
    }
    info
}

/// Token counts gathered from every choice of a streamed response.
#[derive(Default)]
pub(super) struct UsageTally {
    pub(super) prompt: u32,
    pub(super) completion: u32,
}

pub(super) fn chat_stream(app: &AppState, generations: Vec<Generation>, id: String, created: u64, model: String, tools: Option<ToolRequest>, include_usage: bool) -> Response {
    let tally = Arc::new(Mutex::new(UsageTally::default()));
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |choices: Value| {
            json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": fingerprint(), "choices": choices })
        }
    };
    let per_choice = generations.into_iter().enumerate().map(|(index, g)| {
        let chunk = chunk.clone();
        let tools = tools.clone();
        let tally = Arc::clone(&tally);
        // The finish reason is "tool_calls" once a call was given.
        let mut called = false;
        choice_events(g, tools)
            .flat_map(move |ev| {
                let delta = |d: Value, lp: Value, reason: Value| chunk(json!([{ "index": index, "delta": d, "logprobs": lp, "finish_reason": reason }]));
                let out: Vec<Value> = match ev {
                    ChoiceEvent::Start => vec![delta(json!({ "role": "assistant", "content": "" }), Value::Null, Value::Null)],
                    ChoiceEvent::Piece(Piece::Text { text, logprobs }) => {
                        let lp = if logprobs.is_empty() { Value::Null } else { chat_logprobs(&logprobs) };
                        vec![delta(json!({ "content": text }), lp, Value::Null)]
                    }
                    ChoiceEvent::Piece(Piece::ToolCall { name, arguments, .. }) => {
                        called = true;
                        let mut call = tool_call_json(&name, &arguments);
                        call["index"] = json!(0);
                        vec![delta(json!({ "tool_calls": [call] }), Value::Null, Value::Null)]
                    }
                    ChoiceEvent::Piece(Piece::Done(completion)) => {
                        if let Ok(mut t) = tally.lock() {
                            t.prompt = completion.prompt_tokens;
                            t.completion += completion.eval_tokens;
                        }
                        let reason = if called { "tool_calls" } else { finish_reason(completion.reason) };
                        vec![delta(json!({}), Value::Null, json!(reason))]
                    }
                    ChoiceEvent::Piece(Piece::Failed(e)) => vec![OpenAiError::from(ApiError::from(e)).body()],
                };
                futures::stream::iter(out)
            })
            .boxed()
    });
    let merged = futures::stream::select_all(per_choice);
    let usage_chunk = move |usage: Value| {
        json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": fingerprint(), "choices": [], "usage": usage })
    };
    sse_response(app, merged.chain(usage_tail(tally, include_usage, usage_chunk)))
}

/// The last chunk of a stream that asked for `stream_options.include_usage`: the tokens of
/// every choice, counted once they have all finished.
pub(super) fn usage_tail(tally: Arc<Mutex<UsageTally>>, include_usage: bool, chunk: impl FnOnce(Value) -> Value + Send + 'static) -> impl Stream<Item = Value> + Send {
    futures::stream::once(async move {
        let t = tally.lock().map(|t| (t.prompt, t.completion)).unwrap_or((0, 0));
        include_usage.then(|| chunk(usage(t.0, t.1)))
    })
    .filter_map(|v| async move { v })
}

/// What one streamed choice produces: a start (the role chunk), then its pieces.
pub(super) enum ChoiceEvent {
    Start,
    Piece(Piece),
}

pub(super) fn choice_events(g: Generation, tools: Option<ToolRequest>) -> impl Stream<Item = ChoiceEvent> + Send {
    futures::stream::once(async { ChoiceEvent::Start }).chain(reply::pieces(g.events, tools).map(ChoiceEvent::Piece))
}
