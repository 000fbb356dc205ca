//! `POST /v1/completions`: raw text prompts, `echo`, `n` and text log-probabilities.

use super::*;

pub(super) async fn completions(State(app): State<AppState>, Key(account, sticky): Key, OpenAiJson(req): OpenAiJson<CompletionRequest>) -> OaiResult<Response> {
    let started = Instant::now();
    let mut plan = req.sampling.plan()?;
    plan.service.account = account;
    plan.service.sticky = sticky.or(plan.service.sticky);
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(invalid("suffix", "suffix (insertion) is not supported"));
    }
    let prompts: Vec<String> = match req.prompt {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).map(String::from).collect()
        }
        Some(Value::Array(items)) if !items.is_empty() => return Err(invalid("prompt", "token-id prompts are not supported; send text")),
        _ => return Err(invalid("prompt", "prompt must be a string or a list of strings")),
    };
    let top = match req.logprobs {
        None => None,
        Some(n) if (0..=5).contains(&n) => Some(n as u8),
        Some(n) => return Err(invalid("logprobs", format!("logprobs must be between 0 and 5, not {n}"))),
    };
    plan.logprobs = top;
    let echo = req.echo.unwrap_or(false);
    let mut generations = Vec::new();
    for p in &prompts {
        let valid = ValidRequest {
            model: plan.model.clone(),
            prompt: PromptSpec::Generate { prompt: p.clone(), system: None, template: None, raw: true, context: Vec::new() },
            tools: None,
            options: plan.options.clone(),
            grammar: plan.grammar.clone(),
            format: None,
            logprobs: plan.logprobs,
            keep_alive: plan.keep_alive,
            stream: plan.stream,
            service: plan.service.clone(),
        };
        generations.extend(start_choices(&app, valid, plan.n, started).await?);
    }
    let info = combined_info(&generations);
    let id = new_id("cmpl");
    let created = unix_now();
    let model = plan.model.clone();
    let n = plan.n;
    if plan.stream {
        let tally = Arc::new(Mutex::new(UsageTally::default()));
        let per_choice = generations.into_iter().enumerate().map(|(index, g)| {
            let (id, model, tally) = (id.clone(), model.clone(), Arc::clone(&tally));
            let lead = if echo { prompts[index / n].clone() } else { String::new() };
            let chunk = move |text: String, lp: Value, reason: Value| {
                json!({ "id": id, "object": "text_completion", "created": created, "model": model,
                        "system_fingerprint": fingerprint(),
                        "choices": [{ "index": index, "text": text, "logprobs": lp, "finish_reason": reason }] })
            };
            choice_events(g, None)
                .flat_map(move |ev| {
                    let out = match ev {
                        ChoiceEvent::Start if lead.is_empty() => vec![],
                        ChoiceEvent::Start => vec![chunk(lead.clone(), Value::Null, Value::Null)],
                        ChoiceEvent::Piece(Piece::Text { text, logprobs }) => {
                            let lp = if logprobs.is_empty() { Value::Null } else { text_logprobs(&logprobs, 0) };
                            vec![chunk(text, lp, Value::Null)]
                        }
                        // No tools are offered here.
                        ChoiceEvent::Piece(Piece::ToolCall { .. }) => vec![],
                        ChoiceEvent::Piece(Piece::Done(completion)) => {
                            if let Ok(mut t) = tally.lock() {
                                t.prompt += completion.prompt_tokens;
                                t.completion += completion.eval_tokens;
                            }
                            vec![chunk(String::new(), Value::Null, json!(finish_reason(completion.reason)))]
                        }
                        ChoiceEvent::Piece(Piece::Failed(e)) => vec![OpenAiError::from(ApiError::from(e)).body()],
                    };
                    futures::stream::iter(out)
                })
                .boxed()
        });
        let merged = futures::stream::select_all(per_choice);
        let usage_chunk = move |usage: Value| {
            json!({ "id": id, "object": "text_completion", "created": created, "model": model,
                    "system_fingerprint": fingerprint(), "choices": [], "usage": usage })
        };
        let mut resp = sse_response(&app, merged.chain(usage_tail(tally, plan.include_usage, usage_chunk)));
        crate::api::mark(&mut resp, &plan.model, Some(&info));
        return Ok(resp);
    }
    let results = futures::future::join_all(generations.into_iter().map(|g| finish(g, None))).await;
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (index, r) in results.into_iter().enumerate() {
        let f = r?;
        prompt_tokens += f.completion.prompt_tokens;
        completion_tokens += f.completion.eval_tokens;
        let lead = if echo { prompts[index / n].as_str() } else { "" };
        let logprobs = if f.logprobs.is_empty() { Value::Null } else { text_logprobs(&f.logprobs, lead.len()) };
        choices.push(json!({ "index": index, "text": format!("{lead}{}", f.text), "logprobs": logprobs,
                             "finish_reason": finish_reason(f.completion.reason) }));
    }
    let mut body = json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": fingerprint(), "choices": choices, "usage": usage(prompt_tokens, completion_tokens),
    });
    crate::api::ollama::annotate(&mut body, &info);
    let mut resp = Json(body).into_response();
    crate::api::mark(&mut resp, &plan.model, Some(&info));
    Ok(resp)
}

/// The legacy completions `logprobs` object: tokens, their logprobs, top alternatives as
/// maps, and each token's character offset in the text.
pub(super) fn text_logprobs(lps: &[TokenLogprob], start: usize) -> Value {
    let mut offset = start;
    let (mut tokens, mut token_logprobs, mut top, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for lp in lps {
        let t = String::from_utf8_lossy(&lp.bytes).into_owned();
        offsets.push(offset);
        offset += t.len();
        tokens.push(t);
        token_logprobs.push(lp.logprob);
        let alternatives: Map<String, Value> = lp.top.iter().map(|(b, l)| (String::from_utf8_lossy(b).into_owned(), json!(l))).collect();
        top.push(Value::Object(alternatives));
    }
    json!({ "tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets })
}
