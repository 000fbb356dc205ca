//! The resource manager on the fake backend: loading once, eviction, keep-alive, queue bounds,
//! load deadlines, concurrent loads and dead workers, on tokio's paused clock where time
//! matters. Also the fixture the service and router tests build on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::backend::fake::{FakeBackend, FakeSettings};
use crate::engine::convert::Weights;

const MIB: u64 = 1 << 20;

/// A models directory with empty drop-in files (the fake backend never reads them); removed
/// when dropped.
pub(crate) struct TempModels {
    pub dir: PathBuf,
}

impl TempModels {
    pub fn new(names: &[&str]) -> TempModels {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("hearth-unit-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for name in names {
            std::fs::write(dir.join(format!("{name}.gguf")), b"fake").expect("model file");
        }
        TempModels { dir }
    }
}

impl Drop for TempModels {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn settings() -> LoadSettings {
    LoadSettings { num_ctx: 2048, parallel: 2, threads: 1, threads_batch: 1, batch_size: 512, weights: Weights::AsStored, speculative: true, prefix_reuse: crate::engine::exact::Reuse::Fast, prefix_store_limit: 64 << 20 }
}

pub(crate) fn limits(budget_mib: u64) -> Limits {
    Limits { ram_budget: budget_mib * MIB, max_loaded: None, max_queue: 4, load_wait: Duration::from_secs(120) }
}

/// A manager over the fake backend and a store holding `a`, `b` and `c`.
pub(crate) fn manager(fake: &FakeBackend, limits: Limits) -> (ModelManager, TempModels) {
    let models = TempModels::new(&["a", "b", "c"]);
    let store = Arc::new(ModelStore::new(models.dir.clone()));
    let m = ModelManager::new(store, Arc::new(fake.clone()), settings(), KeepAlive::For(Duration::from_secs(300)), limits);
    (m, models)
}

async fn lease(m: &ModelManager, name: &str) -> Result<ModelLease, ResourceError> {
    let entry = m.store().resolve(name).expect("known model");
    m.acquire(entry, None, None).await
}

/// Yields until `cond` holds; fails after 10 s of real time.
pub(crate) async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "still not true after 10 s: {what}");
        tokio::task::yield_now().await;
    }
}

fn loaded(m: &ModelManager) -> Vec<String> {
    let mut names: Vec<String> = m.loaded().into_iter().map(|i| i.entry.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_model_loads_once_and_is_reused() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(1000));
    let first = lease(&m, "a").await.expect("load");
    let second = lease(&m, "a").await.expect("reuse");
    assert!(Arc::ptr_eq(&first.model, &second.model));
    assert_eq!(fake.loads(), 1);
    assert_eq!(m.used(), 100 * MIB);
    assert_eq!(m.loaded()[0].in_flight, 2);
}

#[tokio::test]
async fn the_least_recently_used_idle_model_makes_room() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(250));
    drop(lease(&m, "a").await.expect("a"));
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(lease(&m, "b").await.expect("b"));
    tokio::time::advance(Duration::from_secs(1)).await;
    // a is used again: b is now the oldest.
    drop(lease(&m, "a").await.expect("a again"));
    let _c = lease(&m, "c").await.expect("c");
    assert_eq!(loaded(&m), ["a:latest", "c:latest"]);
    assert_eq!(fake.loads(), 3);
}

#[tokio::test]
async fn max_loaded_models_caps_the_count() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, Limits { max_loaded: Some(1), ..limits(1000) });
    drop(lease(&m, "a").await.expect("a"));
    drop(lease(&m, "b").await.expect("b"));
    assert_eq!(loaded(&m), ["b:latest"]);
}

#[tokio::test]
async fn a_model_larger_than_the_budget_is_refused_before_loading() {
    let fake = FakeBackend::new(FakeSettings { default_bytes: 300 * MIB, ..FakeSettings::default() });
    let (m, _dir) = manager(&fake, limits(250));
    let err = lease(&m, "a").await.err().expect("too large");
    assert!(matches!(err, ResourceError::TooLarge { needed, budget, .. } if needed == 300 * MIB && budget == 250 * MIB), "{err}");
    assert_eq!(fake.loads(), 0);
}

#[tokio::test(start_paused = true)]
async fn keep_alive_unloads_an_idle_model_when_it_runs_out() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(1000));
    let l = lease(&m, "a").await.expect("a");
    // A leased model never expires, however long its request runs.
    tokio::time::advance(Duration::from_secs(3600)).await;
    m.reap_expired();
    assert_eq!(loaded(&m), ["a:latest"]);
    drop(l);
    tokio::time::advance(Duration::from_secs(299)).await;
    m.reap_expired();
    assert_eq!(loaded(&m), ["a:latest"]);
    tokio::time::advance(Duration::from_secs(2)).await;
    m.reap_expired();
    assert!(loaded(&m).is_empty());
}

#[tokio::test]
async fn keep_alive_zero_unloads_after_the_request_and_huge_values_mean_forever() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(1000));
    let entry = m.store().resolve("a").expect("a");
    drop(m.acquire(entry.clone(), None, Some(KeepAlive::For(Duration::ZERO))).await.expect("a"));
    assert!(loaded(&m).is_empty());
    // Past the clock's range: kept, not a panic.
    drop(m.acquire(entry, None, Some(KeepAlive::For(Duration::from_secs(u64::MAX / 2)))).await.expect("a"));
    m.reap_expired();
    assert_eq!(loaded(&m), ["a:latest"]);
}

#[tokio::test]
async fn the_queue_per_model_is_bounded() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, Limits { max_queue: 1, ..limits(1000) });
    // Two slots (parallel 2) plus one waiting are admitted; the fourth is turned away.
    let _held: Vec<ModelLease> = vec![lease(&m, "a").await.expect("1"), lease(&m, "a").await.expect("2"), lease(&m, "a").await.expect("3")];
    let err = lease(&m, "a").await.err().expect("busy");
    assert!(matches!(err, ResourceError::Busy { waiting: 1, .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_load_waiting_for_busy_models_gives_up_at_its_deadline() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, Limits { load_wait: Duration::from_secs(30), ..limits(150) });
    let _busy = lease(&m, "a").await.expect("a");
    let started = tokio::time::Instant::now();
    let err = lease(&m, "b").await.err().expect("no room");
    assert!(matches!(err, ResourceError::NoRoom { .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(30));
    assert_eq!(loaded(&m), ["a:latest"]);
    // Nothing stays reserved: once a is idle, b loads in its place.
    drop(_busy);
    let _b = lease(&m, "b").await.expect("b");
    assert_eq!(loaded(&m), ["b:latest"]);
}

#[tokio::test]
async fn a_waiting_load_proceeds_when_the_busy_model_finishes() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(150));
    let busy = lease(&m, "a").await.expect("a");
    let m2 = m.clone();
    let waiting = tokio::spawn(async move { lease(&m2, "b").await.map(|l| l.entry.name.clone()) });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    drop(busy);
    assert_eq!(waiting.await.expect("task").expect("b loads"), "b:latest");
    assert_eq!(loaded(&m), ["b:latest"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_of_different_models_do_not_wait_on_each_other() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(1000));
    let gate = fake.hold_loads("a:latest");
    let m2 = m.clone();
    let slow = tokio::spawn(async move { lease(&m2, "a").await.map(|_| ()) });
    // b loads while a's load is held.
    let b = lease(&m, "b").await.expect("b");
    assert_eq!(b.entry.name, "b:latest");
    assert!(!slow.is_finished());
    drop(gate);
    slow.await.expect("task").expect("a loads");
    assert_eq!(fake.loads(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_for_one_unloaded_model_load_it_once() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(1000));
    let gate = fake.hold_loads("a:latest");
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { lease(&m, "a").await.map(|l| Arc::clone(&l.model)) })
        })
        .collect();
    tokio::task::yield_now().await;
    drop(gate);
    let mut models = Vec::new();
    for t in tasks {
        models.push(t.await.expect("task").expect("lease"));
    }
    assert!(Arc::ptr_eq(&models[0], &models[1]));
    assert_eq!(fake.loads(), 1);
}

#[tokio::test]
async fn concurrent_loads_reserve_their_bytes() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(150));
    // While a's load is held, its 100 MiB are reserved: b (100 MiB) can't fit beside it.
    let gate = fake.hold_loads("a:latest");
    let m2 = m.clone();
    let a = tokio::spawn(async move { lease(&m2, "a").await.map(drop) });
    eventually("a's bytes are reserved", || m.used() > 0).await;
    assert_eq!(m.used(), 100 * MIB);
    let m3 = m.clone();
    let b = tokio::spawn(async move { lease(&m3, "b").await.map(drop) });
    tokio::task::yield_now().await;
    assert!(!b.is_finished());
    drop(gate);
    a.await.expect("task").expect("a");
    b.await.expect("task").expect("b loads once a is idle");
    assert_eq!(loaded(&m), ["b:latest"]);
}

#[tokio::test]
async fn a_failed_load_gives_its_reservation_back() {
    let fake = FakeBackend::default();
    fake.settings(|s| {
        s.failing_loads.insert("a:latest".into());
    });
    let (m, _dir) = manager(&fake, limits(150));
    let err = lease(&m, "a").await.err().expect("fails");
    assert!(matches!(err, ResourceError::Engine(EngineError::Load { .. })), "{err}");
    assert_eq!(m.used(), 0);
    lease(&m, "b").await.expect("b fits");
}

#[tokio::test]
async fn a_model_whose_worker_died_is_loaded_again() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(1000));
    let first = lease(&m, "a").await.expect("a");
    fake.kill("a:latest");
    drop(first);
    let second = lease(&m, "a").await.expect("a again");
    assert!(second.model.is_alive());
    assert_eq!(fake.loads(), 2);
    assert_eq!(loaded(&m), ["a:latest"]);
    // The dead instance's bytes are released, not counted twice.
    eventually("the dead instance is freed", || m.used() == 100 * MIB).await;
    eventually("the dead instance is dropped", || fake.live().len() == 1).await;
}

#[tokio::test]
async fn a_dead_instance_still_leased_counts_until_its_last_request_ends() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(1000));
    let held = lease(&m, "a").await.expect("a");
    fake.kill("a:latest");
    let fresh = lease(&m, "a").await.expect("a again");
    assert!(!Arc::ptr_eq(&held.model, &fresh.model));
    // The dead instance is retired, not freed, while a request still holds it.
    assert_eq!(m.used(), 200 * MIB);
    drop(held);
    eventually("the dead instance is freed after its last request", || m.used() == 100 * MIB).await;
    eventually("the dead instance is dropped", || fake.live().len() == 1).await;
}

#[tokio::test]
async fn the_embedding_context_is_counted_once_on_the_first_embed_request() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(1000));
    let first = lease(&m, "a").await.expect("a");
    assert_eq!(m.used(), 100 * MIB);
    let second = lease(&m, "a").await.expect("a again");
    let (one, two) = tokio::join!(m.count_embedding(&first), m.count_embedding(&second));
    one.expect("counted");
    two.expect("counted");
    m.count_embedding(&first).await.expect("already counted");
    assert_eq!(m.used(), 110 * MIB);
    assert_eq!(m.loaded()[0].size, 110 * MIB);
}

#[tokio::test]
async fn counting_the_embedding_context_unloads_idle_models_for_room() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(205));
    drop(lease(&m, "a").await.expect("a"));
    let b = lease(&m, "b").await.expect("b");
    m.count_embedding(&b).await.expect("room made");
    assert_eq!(loaded(&m), ["b:latest"]);
    eventually("a freed", || m.used() == 110 * MIB).await;
    // The model itself doesn't count twice against --max-loaded-models.
    let (m, _dir) = manager(&fake, Limits { max_loaded: Some(1), ..limits(1000) });
    let a = lease(&m, "a").await.expect("a");
    m.count_embedding(&a).await.expect("counted");
    assert_eq!((loaded(&m), m.used()), (vec!["a:latest".to_string()], 110 * MIB));
}

#[tokio::test]
async fn an_embedding_context_past_the_budget_is_refused() {
    let fake = FakeBackend::default();
    let (m, _dir) = manager(&fake, limits(105));
    let a = lease(&m, "a").await.expect("a");
    let err = m.count_embedding(&a).await.expect_err("too large");
    assert!(matches!(err, ResourceError::TooLarge { needed, .. } if needed == 110 * MIB), "{err}");
    assert_eq!(m.used(), 100 * MIB);
}
