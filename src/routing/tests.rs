//! The routing table's plans (split weights, stickiness, nested fallbacks), breakers, counts,
//! feedback and cost, without any server.

use super::*;

fn target(model: &str, weight: u32) -> TargetSpec {
    TargetSpec { name: model.into(), model: model.into(), weight, options: OptionPatch::default(), persona: None, adapter: None }
}

fn split() -> RouteSpec {
    RouteSpec { name: "ab".into(), strategy: Strategy::Split, targets: vec![target("a:latest", 70), target("b:latest", 30)] }
}

#[test]
fn a_split_follows_its_weights_and_sticks_to_a_key() {
    let table = Table::default();
    let route = split();
    let mut a = 0;
    for i in 0..10_000 {
        let plan = table.plan(&route, Some(&format!("conversation-{i}")));
        if plan.variant.as_deref() == Some("a:latest") {
            a += 1;
        }
        assert_eq!(plan.targets.len(), 1);
    }
    assert!((6_700..=7_300).contains(&a), "70% of 10,000 keys, got {a}");
    let first = table.plan(&route, Some("same")).variant;
    for _ in 0..50 {
        assert_eq!(table.plan(&route, Some("same")).variant, first, "one key, one variant");
    }
    let random: usize = (0..2_000).filter(|_| table.plan(&route, None).variant.as_deref() == Some("b:latest")).count();
    assert!((400..=800).contains(&random), "30% of 2,000 unkeyed requests, got {random}");
}

#[test]
fn a_variant_that_is_a_fallback_route_brings_its_targets_with_the_variants_options() {
    let mut table = Table::default();
    let inner = RouteSpec { name: "chat".into(), strategy: Strategy::Fallback, targets: vec![target("lan/x", 1), target("x:latest", 1)] };
    table.routes.insert("chat".into(), Arc::new(inner));
    let mut v = target("chat", 1);
    v.options.temperature = Some(0.0);
    let route = RouteSpec { name: "ab".into(), strategy: Strategy::Split, targets: vec![v] };
    let plan = table.plan(&route, Some("k"));
    assert_eq!(plan.variant.as_deref(), Some("chat"));
    let got: Vec<_> = plan.targets.iter().map(|(r, t)| (r.as_str(), t.model.as_str(), t.options.temperature)).collect();
    assert_eq!(got, [("chat", "lan/x", Some(0.0)), ("chat", "x:latest", Some(0.0))]);
}

#[test]
fn zero_weight_variants_get_nothing() {
    let targets = [target("a", 0), target("b", 5)];
    for p in 0..100 {
        assert_eq!(pick(&targets, p).model, "b");
    }
}

#[tokio::test]
async fn breakers_counts_and_feedback_are_kept_by_name() {
    let router = Router::new(Table { breaker: BreakerSettings { failures: 2, cooldown: Duration::from_secs(60) }, ..Table::default() });
    let fail = Outcome::Failed { kind: "upstream", moved_on: true };
    router.report("chat", "lan/x", Some("lan/x"), fail);
    assert!(router.allow("lan/x"));
    router.report("chat", "lan/x", Some("lan/x"), fail);
    assert!(!router.allow("lan/x"), "open after two failures in a row");
    router.report("chat", "lan/x", Some("lan/x"), Outcome::Skipped);
    router.report("chat", "x", Some("x"), Outcome::Served(Served { input_tokens: 3, output_tokens: 4, ..Default::default() }));
    router.remember("req-1", Attribution { route: "chat".into(), variant: None, target: "x".into(), target_route: "chat".into() }).await;
    assert!(router.feedback("req-1", Some(1.0), None).await.expect("feedback").is_some());
    assert!(router.feedback("nope", Some(1.0), None).await.expect("feedback").is_none());
    let state = router.state();
    let lan = &state.stats[&("chat".to_string(), "lan/x".to_string())];
    assert_eq!((lan.requests, lan.errors, lan.fallbacks, lan.skipped), (2, 2, 2, 1));
    let x = state.stats[&("chat".to_string(), "x".to_string())].view();
    assert_eq!((x["requests"].as_u64(), x["tokens"]["output"].as_u64(), x["feedback"]["mean_score"].as_f64()), (Some(1), Some(4), Some(1.0)));
}

#[test]
fn local_cost_is_cpu_time_and_remote_cost_is_tokens() {
    let router = Router::new(Table { cpu_hour_price: 3.6, threads: 2.0, ..Table::default() });
    // 10 s on 2 threads at $3.60 per CPU-hour: 20 CPU-seconds = $0.02.
    assert!((router.cost("x:latest", 100, 100, Duration::from_secs(10)) - 0.02).abs() < 1e-9);
}

#[test]
fn a_failed_health_check_opens_the_providers_breakers_only() {
    let router = Router::new(Table::default());
    assert!(router.allow("lan/x") && router.allow("wan/y"));
    router.provider_health("lan", Err("could not connect".into()));
    assert!(!router.allow("lan/x"), "lan's model is passed over");
    assert!(router.allow("wan/y"), "another provider's is not");
    router.provider_health("lan", Ok(()));
    assert!(!router.allow("lan/x"), "a good check doesn't close it: a probe does, after the cooldown");
}

#[tokio::test]
async fn feedback_reaches_any_router_sharing_the_ledger_and_counts_everyones() {
    let dir = std::env::temp_dir().join(format!("hearth-ledger-{}", uuid::Uuid::new_v4()));
    let store = ConversationStore::open(&dir).expect("open");
    let route = RouteSpec { name: "ab".into(), strategy: Strategy::Split, targets: vec![target("a", 1), target("b", 1)] };
    let table = || Table { routes: BTreeMap::from([("ab".to_string(), Arc::new(route.clone()))]), ..Table::default() };
    // Two servers: one answered, the other gets the feedback.
    let (served, other) = (Router::new(table()).with_ledger(store.clone()), Router::new(table()).with_ledger(store.clone()));
    let a = Attribution { route: "ab".into(), variant: Some("a".into()), target: "a".into(), target_route: "ab".into() };
    served.remember("req-1", a.clone()).await;
    // The ledger holds it once `remember` returns: no wait.
    assert_eq!(store.served("req-1").await.expect("served"), Some(a.clone()));
    assert_eq!(other.feedback("req-1", Some(1.0), Some("good")).await.expect("feedback"), Some(a));
    assert_eq!(served.feedback("req-1", Some(0.0), None).await.expect("feedback").map(|a| a.target), Some("a".to_string()));
    assert_eq!(other.feedback("req-2", Some(1.0), None).await.expect("feedback"), None);
    for r in [&served, &other] {
        let view = r.view_shared().await;
        let targets = &view["routes"][0]["targets"];
        assert_eq!(targets[0]["feedback"], serde_json::json!({"count": 2, "scored": 2, "mean_score": 0.5, "labels": {"good": 1}}), "{view}");
        assert_eq!(targets[1]["feedback"]["count"], 0, "{view}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
