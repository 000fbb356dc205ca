//! The service layer on the fake backend: the event stream, the response cache, admission,
//! timeouts, conversations and a dying worker, with no model files.

use std::time::Duration;

use super::*;
use crate::backend::fake::FakeBackend;
use crate::backend::Completion;
use crate::engine::DoneReason;
use crate::cache::CacheSettings;
use crate::resources::tests::{limits, manager, TempModels};

struct Fixture {
    service: Service,
    fake: FakeBackend,
    _models: TempModels,
    _data: TempModels,
}

fn fixture(cache: bool, settings: ServiceSettings) -> Fixture {
    let fake = FakeBackend::default();
    let (manager, models) = manager(&fake, limits(1000));
    let cache = if cache {
        ResponseCache::new(&CacheSettings::default()).expect("memory cache")
    } else {
        ResponseCache::disabled()
    };
    let data = TempModels::new(&[]);
    let conversations = ConversationStore::open(&data.dir).expect("conversations");
    let service = Service::new(manager, cache, Some(conversations), Metrics::new(Default::default()), catalog::Catalog::default(), settings);
    Fixture { service, fake, _models: models, _data: data }
}

fn options(json: serde_json::Value) -> OptionPatch {
    OptionPatch::from_json(&json).expect("options")
}

fn generate(prompt: &str, opts: serde_json::Value) -> ValidRequest {
    ValidRequest {
        model: "a".into(),
        prompt: PromptSpec::Generate { prompt: prompt.into(), system: None, template: None, raw: false, context: Vec::new() },
        tools: None,
        options: options(opts),
        grammar: None,
        format: None,
        logprobs: None,
        keep_alive: None,
        stream: true,
        service: ServiceOptions::default(),
    }
}

fn chat_turn(conversation: &str, text: &str) -> ValidRequest {
    let mut r = generate("", serde_json::json!({"temperature": 0, "num_predict": 3}));
    r.prompt = PromptSpec::Chat { messages: vec![TemplateMessage { role: "user".into(), content: text.into() }], tools: Vec::new() };
    r.service.conversation_id = Some(conversation.into());
    r
}

/// What a generation sent: its text, and how it ended.
struct Answer {
    text: String,
    done: Option<Completion>,
    failed: Option<EngineError>,
    info: ResponseInfo,
}

async fn run(service: &Service, req: ValidRequest) -> Result<Answer, ServiceError> {
    let Outcome::Generating(mut g) = service.start(req, Caller::Network, Instant::now()).await? else {
        panic!("expected a generation");
    };
    let mut a = Answer { text: String::new(), done: None, failed: None, info: g.info.clone() };
    while let Some(event) = g.events.recv().await {
        assert!(a.done.is_none() && a.failed.is_none(), "an event after the last one");
        match event {
            Event::Text(t) => a.text.push_str(&t),
            Event::Logprob(_) => {}
            Event::Done(c) => a.done = Some(c),
            Event::Failed(e) => a.failed = Some(e),
        }
    }
    Ok(a)
}

#[tokio::test]
async fn a_generation_streams_its_tokens_then_done_with_counts() {
    let f = fixture(false, ServiceSettings::default());
    let a = run(&f.service, generate("one two three", serde_json::json!({"num_predict": 4}))).await.expect("start");
    assert_eq!(a.text, "t0 t1 t2 t3 ");
    let done = a.done.expect("done");
    assert_eq!((done.reason, done.eval_tokens), (DoneReason::Length, 4));
    // The fake's "rendering" of a generate prompt: its words.
    assert_eq!(done.prompt_tokens, 3);
    assert_eq!(a.info.cache, CacheResult::Miss);
}

#[tokio::test]
async fn a_deterministic_answer_is_cached_and_replayed_without_the_backend() {
    let f = fixture(true, ServiceSettings::default());
    let req = || generate("why", serde_json::json!({"temperature": 0, "num_predict": 3}));
    let first = run(&f.service, req()).await.expect("first");
    let second = run(&f.service, req()).await.expect("second");
    assert_eq!(first.info.cache, CacheResult::Miss);
    assert_eq!(second.info.cache, CacheResult::Hit);
    assert_eq!(second.text, first.text);
    assert_eq!(second.done.expect("done").eval_tokens, 3);
    assert_eq!(f.fake.generations(), 1);
    // A sampled request is not cached unless asked.
    run(&f.service, generate("why", serde_json::json!({"num_predict": 3}))).await.expect("sampled");
    run(&f.service, generate("why", serde_json::json!({"num_predict": 3}))).await.expect("sampled");
    assert_eq!(f.fake.generations(), 3);
}

#[tokio::test]
async fn a_failed_answer_is_not_cached() {
    let f = fixture(true, ServiceSettings::default());
    f.fake.settings(|s| s.token_delay = Duration::from_millis(5));
    let req = || generate("why", serde_json::json!({"temperature": 0, "num_predict": 50}));
    let Outcome::Generating(mut g) = f.service.start(req(), Caller::Network, Instant::now()).await.expect("start") else {
        panic!("expected a generation")
    };
    assert!(matches!(g.events.recv().await, Some(Event::Text(_))));
    f.fake.kill("a:latest");
    let mut last = None;
    while let Some(e) = g.events.recv().await {
        last = Some(e);
    }
    assert!(matches!(last, Some(Event::Failed(EngineError::WorkerGone))), "{last:?}");
    f.fake.settings(|s| s.token_delay = Duration::ZERO);
    let again = run(&f.service, req()).await.expect("again");
    assert_eq!(again.info.cache, CacheResult::Miss);
    assert!(again.done.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_dead_worker_fails_its_requests_once_and_the_next_request_loads_it_again() {
    let f = fixture(false, ServiceSettings::default());
    f.fake.settings(|s| s.token_delay = Duration::from_secs(1));
    let start = || f.service.start(generate("hi", serde_json::json!({"num_predict": 100})), Caller::Network, Instant::now());
    let (Outcome::Generating(mut one), Outcome::Generating(mut two)) = (start().await.expect("one"), start().await.expect("two")) else {
        panic!("expected generations")
    };
    assert!(matches!(one.events.recv().await, Some(Event::Text(_))));
    f.fake.kill("a:latest");
    for g in [&mut one, &mut two] {
        let mut events = Vec::new();
        while let Some(e) = g.events.recv().await {
            events.push(e);
        }
        let failures = events.iter().filter(|e| matches!(e, Event::Failed(_))).count();
        assert_eq!(failures, 1, "{events:?}");
        assert!(matches!(events.last(), Some(Event::Failed(EngineError::WorkerGone))), "{events:?}");
    }
    f.fake.settings(|s| s.token_delay = Duration::ZERO);
    let next = run(&f.service, generate("hi", serde_json::json!({"num_predict": 2}))).await.expect("next");
    assert_eq!(next.text, "t0 t1 ");
    assert_eq!(f.fake.loads(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_requests_turns_generations_and_embeddings_away() {
    let f = fixture(false, ServiceSettings { max_concurrent_requests: 1, ..ServiceSettings::default() });
    f.fake.settings(|s| s.token_delay = Duration::from_secs(1));
    let Outcome::Generating(mut running) = f.service.start(generate("hi", serde_json::json!({"num_predict": 2})), Caller::Network, Instant::now()).await.expect("first") else {
        panic!("expected a generation")
    };
    let second = f.service.start(generate("hi", serde_json::json!({"num_predict": 2})), Caller::Network, Instant::now()).await;
    assert!(matches!(second, Err(ServiceError::Busy { limit: 1 })));
    let embed = f.service.embed(embed_request(&["hello"]), Caller::Network).await;
    assert!(matches!(embed, Err(ServiceError::Busy { limit: 1 })), "{:?}", embed.err());
    while running.events.recv().await.is_some() {}
    // The finished generation gave its place back.
    f.service.embed(embed_request(&["hello"]), Caller::Network).await.expect("admitted now");
}

#[tokio::test(start_paused = true)]
async fn request_timeout_stops_a_long_generation() {
    let f = fixture(false, ServiceSettings { request_timeout: Some(Duration::from_secs(5)), ..ServiceSettings::default() });
    f.fake.settings(|s| s.token_delay = Duration::from_secs(1));
    let a = run(&f.service, generate("hi", serde_json::json!({"num_predict": 100}))).await.expect("start");
    assert!(matches!(a.failed, Some(EngineError::TimedOut(t)) if t == Duration::from_secs(5)), "{:?}", a.failed);
    assert!(a.done.is_none());
    let sent = a.text.split_whitespace().count();
    assert!((3..=5).contains(&sent), "{sent} tokens in 5 s at one a second");
}

fn embed_request(inputs: &[&str]) -> ValidEmbedRequest {
    ValidEmbedRequest {
        model: "a".into(),
        inputs: inputs.iter().map(|t| EmbedInput::Text(t.to_string())).collect(),
        truncate: true,
        dimensions: None,
        normalize: false,
        options: OptionPatch::default(),
        keep_alive: None,
        account: None,
    }
}

#[tokio::test]
async fn embeddings_are_counted_and_checked() {
    let f = fixture(false, ServiceSettings::default());
    let r = f.service.embed(embed_request(&["a b c", "d"]), Caller::Network).await.expect("embed");
    assert_eq!(r.prompt_tokens, 4);
    assert_eq!(r.embeddings.len(), 2);
    assert_eq!(r.embeddings[0][0], 3.0);
    let mut too_wide = embed_request(&["a"]);
    too_wide.dimensions = Some(9);
    let err = f.service.embed(too_wide, Caller::Network).await.expect_err("too wide");
    assert!(matches!(err, ServiceError::Engine(EngineError::Dimensions { requested: 9, n_embd: 8 })), "{err}");
    let mut no_truncate = embed_request(&[&"w ".repeat(3000)]);
    no_truncate.truncate = false;
    let err = f.service.embed(no_truncate, Caller::Network).await.expect_err("too long");
    assert!(matches!(err, ServiceError::Engine(EngineError::InputTooLong { tokens: 3000, num_ctx: 2048 })), "{err}");
}

#[tokio::test]
async fn a_conversation_stores_each_finished_turn_and_puts_its_history_in_front() {
    let f = fixture(false, ServiceSettings::default());
    let first = run(&f.service, chat_turn("c1", "hello there")).await.expect("turn 1");
    let second = run(&f.service, chat_turn("c1", "and again")).await.expect("turn 2");
    assert_eq!(second.info.conversation_id.as_deref(), Some("c1"));
    // Turn 2's prompt holds turn 1: "user: hello there" (3), "assistant: t0 t1 t2" (4), then
    // "user: and again" (3).
    assert_eq!(first.done.expect("done").prompt_tokens, 3);
    assert_eq!(second.done.expect("done").prompt_tokens, 10);
    let stored = f.service.conversations.as_ref().expect("store").history("c1").await.expect("history");
    let stored: Vec<(String, String)> = stored.into_iter().map(|m| (m.role, m.content)).collect();
    let expected = [("user", "hello there"), ("assistant", "t0 t1 t2 "), ("user", "and again"), ("assistant", "t0 t1 t2 ")];
    assert_eq!(stored, expected.map(|(r, c)| (r.to_string(), c.to_string())));
}

#[tokio::test]
async fn a_turn_that_fails_is_not_stored() {
    let f = fixture(false, ServiceSettings::default());
    run(&f.service, chat_turn("c2", "first")).await.expect("turn 1");
    f.fake.settings(|s| s.token_delay = Duration::from_millis(5));
    let mut long = chat_turn("c2", "second");
    long.options.num_predict = Some(1000);
    let Outcome::Generating(mut g) = f.service.start(long, Caller::Network, Instant::now()).await.expect("start") else {
        panic!("expected a generation")
    };
    assert!(matches!(g.events.recv().await, Some(Event::Text(_))));
    f.fake.kill("a:latest");
    while g.events.recv().await.is_some() {}
    let store = f.service.conversations.clone().expect("store");
    assert_eq!(store.history("c2").await.expect("history").len(), 2);
}

#[tokio::test]
async fn a_long_history_is_trimmed_to_fit_and_the_store_keeps_it_all() {
    let f = fixture(false, ServiceSettings::default());
    f.fake.settings(|s| s.n_ctx_slot = 40);
    let mut dropped = 0;
    for i in 0..6 {
        let a = run(&f.service, chat_turn("long", &format!("fact {i} {}", "word ".repeat(5)))).await.expect("turn");
        assert!(a.done.is_some(), "turn {i}: {:?}", a.failed);
        dropped = a.info.dropped_messages;
    }
    assert!(dropped > 0 && dropped % 2 == 0, "whole turns go: {dropped}");
    let stored = f.service.conversations.as_ref().expect("store").history("long").await.expect("history");
    assert_eq!(stored.len(), 12);
}

#[tokio::test]
async fn an_empty_request_loads_and_keep_alive_zero_unloads() {
    let f = fixture(false, ServiceSettings::default());
    let mut load = generate("", serde_json::json!({}));
    let outcome = f.service.start(load.clone(), Caller::Network, Instant::now()).await.expect("load");
    assert!(matches!(outcome, Outcome::Loaded { unloaded: false, .. }));
    assert_eq!(f.service.manager.loaded().len(), 1);
    load.keep_alive = Some(KeepAlive::For(Duration::ZERO));
    let outcome = f.service.start(load, Caller::Network, Instant::now()).await.expect("unload");
    assert!(matches!(outcome, Outcome::Loaded { unloaded: true, .. }));
    assert!(f.service.manager.loaded().is_empty());
    assert_eq!(f.fake.generations(), 0);
}

#[test]
fn options_are_model_under_persona_under_request() {
    let f = fixture(false, ServiceSettings::default());
    let mut entry = crate::store::ModelEntry {
        name: "a:latest".into(),
        path: "a.gguf".into(),
        size: 1,
        modified: std::time::SystemTime::UNIX_EPOCH,
        origin: crate::store::Origin::DropIn,
        digest: None,
        source: None,
        defaults: Default::default(),
    };
    entry.defaults.set_parameters(serde_json::json!({"temperature": 0.1, "top_k": 7, "num_ctx": 64}).as_object().expect("map").clone());
    let persona = catalog::Persona {
        name: "p:latest".into(),
        model: "a:latest".into(),
        system: None,
        options: catalog::with_stop(options(serde_json::json!({"temperature": 0.2, "seed": 3})), vec!["END".into()]),
        examples: Vec::new(),
        adapter: None,
        description: None,
    };
    let request = options(serde_json::json!({"seed": -1}));
    let (o, explicit_num_ctx) = resolve_options(&f.service.manager, &entry, Some(&persona), &request).expect("options");
    assert_eq!((o.temperature, o.top_k, o.seed, o.num_ctx), (0.2, 7, None, 64));
    assert_eq!(o.stop, vec!["END".to_string()]);
    assert!(explicit_num_ctx);
    // Without the model's num_ctx the server's default applies and nothing was explicit.
    entry.defaults.set_parameters(serde_json::Map::new());
    let (o, explicit_num_ctx) = resolve_options(&f.service.manager, &entry, None, &OptionPatch::default()).expect("options");
    assert_eq!((o.num_ctx, explicit_num_ctx, o.temperature), (f.service.manager.defaults().num_ctx, false, 0.8));
    // A manifest with options hearth can't use fails the request that uses it, naming the model.
    entry.defaults.set_parameters(serde_json::json!({"num_gqa": 8}).as_object().expect("map").clone());
    let err = resolve_options(&f.service.manager, &entry, None, &request).expect_err("bad parameters");
    assert!(matches!(&err, ServiceError::ModelDefaults { model, .. } if model == "a:latest"), "{err}");
}

// ---------------------------------------------------------------- routes

fn target(model: &str, weight: u32) -> crate::routing::TargetSpec {
    crate::routing::TargetSpec { name: model.into(), model: model.into(), weight, options: OptionPatch::default(), persona: None, adapter: None }
}

/// A provider on a loopback port nothing listens on: every attempt fails to connect.
fn dead_provider() -> crate::backend::remote::ProviderSpec {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    crate::backend::remote::ProviderSpec {
        name: "gone".into(),
        kind: crate::backend::remote::ProviderKind::Ollama,
        url: format!("http://127.0.0.1:{port}"),
        api_key_env: None,
        timeouts: Default::default(),
        max_concurrent: 4,
        input_per_1k: 0.0,
        output_per_1k: 0.0,
        models: Some(vec!["m".into()]),
        refresh: Duration::from_secs(300),
        health_check: None,
        max_tokens: 16,
        fleet: None,
    }
}

fn routed(f: Fixture, routes: Vec<crate::routing::RouteSpec>) -> Fixture {
    use crate::routing::{breaker::BreakerSettings, Router, RoutingConfig, Table};
    let config = RoutingConfig { providers: vec![dead_provider()], routes, breaker: BreakerSettings { failures: 2, cooldown: Duration::from_secs(600) }, cpu_hour_price: 0.0 };
    let table = Table::build(&config, 1.0, &|_| None).expect("table");
    Fixture { service: f.service.with_router(Router::new(table)), ..f }
}

#[tokio::test]
async fn a_fallback_route_moves_past_a_dead_provider_and_its_breaker_opens() {
    use crate::routing::{RouteSpec, Strategy};
    let route = RouteSpec { name: "chat".into(), strategy: Strategy::Fallback, targets: vec![target("gone/m", 1), target("a:latest", 1)] };
    let f = routed(fixture(false, ServiceSettings::default()), vec![route]);
    for round in 0..4 {
        let mut req = generate("why", serde_json::json!({"num_predict": 2}));
        req.model = "chat".into();
        let a = run(&f.service, req).await.expect("a fallback answers");
        let served = a.info.served.expect("served by a route");
        assert_eq!(served.target, "a:latest");
        assert_eq!(served.tried, ["gone/m"], "round {round}");
        assert!(a.done.is_some());
    }
    let view = f.service.router.view();
    let targets = &view["routes"][0]["targets"];
    assert_eq!(targets[0]["breaker"], "open");
    // Two failures opened it; after that it was passed over.
    assert_eq!((targets[0]["errors"].as_u64(), targets[0]["skipped"].as_u64(), targets[0]["fallbacks"].as_u64()), (Some(2), Some(2), Some(2)));
    assert_eq!((targets[1]["requests"].as_u64(), targets[1]["errors"].as_u64(), targets[1]["tokens"]["output"].as_u64()), (Some(4), Some(0), Some(8)));
}

#[tokio::test]
async fn a_route_with_only_a_dead_provider_fails_with_the_providers_error_then_503() {
    use crate::routing::{RouteSpec, Strategy};
    let route = RouteSpec { name: "only".into(), strategy: Strategy::Fallback, targets: vec![target("gone/m", 1)] };
    let f = routed(fixture(false, ServiceSettings::default()), vec![route]);
    let mut req = generate("why", serde_json::json!({}));
    req.model = "only".into();
    for _ in 0..2 {
        let e = run(&f.service, req.clone()).await.err().expect("fails");
        assert!(matches!(e, ServiceError::Engine(EngineError::Upstream { status: 502, .. })), "{e}");
    }
    let e = run(&f.service, req).await.err().expect("breaker open");
    assert!(matches!(e, ServiceError::NoTarget { .. }), "{e}");
}

#[tokio::test]
async fn a_split_keeps_a_conversation_on_one_variant_and_counts_each() {
    use crate::routing::{RouteSpec, Strategy};
    let route = RouteSpec { name: "ab".into(), strategy: Strategy::Split, targets: vec![target("a:latest", 70), target("b:latest", 30)] };
    let f = routed(fixture(false, ServiceSettings::default()), vec![route]);
    let mut seen = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..40 {
        let mut req = generate("hi", serde_json::json!({"num_predict": 1}));
        req.model = "ab".into();
        req.service.sticky = Some(format!("user-{}", i % 8));
        let a = run(&f.service, req).await.expect("answers");
        let s = a.info.served.expect("served");
        *seen.entry(format!("{} {}", i % 8, s.target)).or_default() += 1;
    }
    // Eight users, five requests each, each always on one variant.
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert!(seen.values().all(|n| *n == 5));
    let view = f.service.router.view();
    let total: u64 = view["routes"][0]["targets"].as_array().expect("targets").iter().map(|t| t["requests"].as_u64().unwrap_or(0)).sum();
    assert_eq!(total, 40);
}
