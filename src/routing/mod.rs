//! Providers and routes: which backend a model name means, and, for a route (a named virtual
//! model), which targets to try in what order. `fallback` tries its targets in order; `split`
//! picks one variant by weight, the same one for the same sticky key (a conversation, a user, a
//! header), and a variant may itself be a fallback route. Each target has a circuit breaker
//! (`breaker`) shared by every route that uses its model, and its counts (`stats`) per route.
//!
//! The `Router` is a cheap-to-share handle: its table (providers, routes, settings) is swapped
//! whole on a config reload, so a request keeps the table it started with; breakers, counts
//! and feedback live beside the table, keyed by name, and survive a reload. Which target
//! served each answer, and the feedback on it, also go to the server's database (its
//! `ledger`), so feedback may reach any server sharing it and counts everyone's.
//!
//! Must not: start generations (the service does, per attempt) or know a wire format.

pub use crate::backend::breaker;
pub mod stats;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use self::breaker::{Breaker, BreakerSettings};
use self::stats::{Served, Stats};
use crate::backend::remote::{Provider, RemoteModel};
use crate::conversations::{ConversationError, ConversationStore};
use crate::spec::options::OptionPatch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Fallback,
    Split,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Fallback => "fallback",
            Strategy::Split => "split",
        }
    }
}

/// One target of a route: a model (local, `provider/model`, or for a split, a fallback
/// route), with what makes it a variant of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    /// Its name in the route's counts; the model unless the config names it.
    pub name: String,
    pub model: String,
    /// Share of a split's traffic (ignored by fallback).
    pub weight: u32,
    /// Options laid over the request's: the variant's options are the experiment.
    pub options: OptionPatch,
    pub persona: Option<String>,
    /// A LoRA adapter applied to the model for this target.
    pub adapter: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub name: String,
    pub strategy: Strategy,
    pub targets: Vec<TargetSpec>,
}

/// The routing half of the config, validated: providers (not yet connected) and routes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingConfig {
    pub providers: Vec<crate::backend::remote::ProviderSpec>,
    pub routes: Vec<RouteSpec>,
    pub breaker: BreakerSettings,
    /// Dollars per CPU-hour, for the cost of answers from local models.
    pub cpu_hour_price: f64,
}

/// Providers and routes as one config reload made them.
#[derive(Debug, Default)]
pub struct Table {
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub routes: BTreeMap<String, Arc<RouteSpec>>,
    pub breaker: BreakerSettings,
    pub cpu_hour_price: f64,
    /// CPU threads a local generation uses, for its CPU-seconds.
    pub threads: f64,
}

impl Table {
    /// Connects nothing: providers are HTTP clients; their keys are read from `env` now.
    pub fn build(config: &RoutingConfig, threads: f64, env: &dyn Fn(&str) -> Option<String>) -> Result<Table, String> {
        let providers = config
            .providers
            .iter()
            .map(|spec| Ok((spec.name.clone(), Arc::new(Provider::new(spec.clone(), env)?))))
            .collect::<Result<_, String>>()?;
        let routes = config.routes.iter().map(|r| (r.name.clone(), Arc::new(r.clone()))).collect();
        Ok(Table { providers, routes, breaker: config.breaker, cpu_hour_price: config.cpu_hour_price, threads })
    }

    /// `provider/model` on a configured provider. A local model whose name has a `/` is only
    /// shadowed when its first part is a provider's name.
    pub fn remote(&self, model: &str) -> Option<Arc<RemoteModel>> {
        let (provider, name) = model.split_once('/')?;
        let p = self.providers.get(provider)?;
        (!name.is_empty()).then(|| p.model(name))
    }

    /// The names clients may use besides local models: each provider's models as
    /// `provider/model`, then the routes; each with where it comes from (`provider`, `route`).
    pub fn listed(&self) -> Vec<(String, &'static str)> {
        let models = self.providers.values().flat_map(|p| p.models().into_iter().map(move |m| (format!("{}/{m}", p.name()), "provider")));
        models.chain(self.routes.keys().map(|r| (r.clone(), "route"))).collect()
    }

    /// The targets to try for `route`, in order, and the split's variant chosen (by `sticky`,
    /// else at random).
    pub fn plan(&self, route: &RouteSpec, sticky: Option<&str>) -> Plan {
        match route.strategy {
            Strategy::Fallback => Plan { variant: None, targets: route.targets.iter().map(|t| (route.name.clone(), t.clone())).collect() },
            Strategy::Split => {
                let point = match sticky {
                    Some(key) => stable_hash(&format!("{}\u{0}{key}", route.name)),
                    None => uuid::Uuid::new_v4().as_u128() as u64,
                };
                let v = pick(&route.targets, point).clone();
                let targets = match self.routes.get(&v.model) {
                    Some(inner) => inner.targets.iter().map(|t| (inner.name.clone(), over(t, &v))).collect(),
                    None => vec![(route.name.clone(), v.clone())],
                };
                Plan { variant: Some(v.name), targets }
            }
        }
    }
}

/// A nested target carries its variant's overrides under its own.
fn over(t: &TargetSpec, variant: &TargetSpec) -> TargetSpec {
    let mut t = t.clone();
    t.options = variant.options.clone().over(&t.options);
    t.persona = t.persona.or_else(|| variant.persona.clone());
    t.adapter = t.adapter.or_else(|| variant.adapter.clone());
    t
}

/// What to try for one request through a route.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The split's variant (its name in the split route's counts).
    pub variant: Option<String>,
    /// (the route whose target it is, the target), in order.
    pub targets: Vec<(String, TargetSpec)>,
}

/// The variant whose share of the total weight holds `point`.
pub fn pick(targets: &[TargetSpec], point: u64) -> &TargetSpec {
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum::<u64>().max(1);
    let mut at = point % total;
    for t in targets {
        if at < u64::from(t.weight) {
            return t;
        }
        at -= u64::from(t.weight);
    }
    &targets[targets.len() - 1]
}

fn stable_hash(s: &str) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(s.as_bytes());
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// How an attempt on a target ended, for its breaker and counts.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// The answer finished.
    Served(Served),
    /// It failed; `moved_on` when the route then tried the next target.
    Failed { kind: &'static str, moved_on: bool },
    /// Passed over without trying.
    Skipped,
}

/// Answers kept for feedback: enough for a busy hour.
const FEEDBACK_MEMORY: usize = 100_000;

/// Which route, variant and target served a request, for its feedback.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    pub route: String,
    pub variant: Option<String>,
    pub target: String,
    /// The route the target belongs to (a split's variant may be a fallback route).
    pub target_route: String,
}

impl Attribution {
    /// The (route, target) counts its feedback goes to: the split's variant, and the target
    /// itself unless it is that variant.
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        if let Some(v) = &self.variant {
            rows.push((self.route.clone(), v.clone()));
        }
        if self.variant.is_none() || self.target_route != self.route {
            rows.push((self.target_route.clone(), self.target.clone()));
        }
        rows
    }
}

#[derive(Default)]
struct State {
    breakers: HashMap<String, Breaker>,
    stats: HashMap<(String, String), Stats>,
    served: HashMap<String, Attribution>,
    order: VecDeque<String>,
    /// Providers' last active check: up or down, when.
    health: HashMap<String, (bool, Instant, Option<String>)>,
}

/// The routing handle the service and the API share.
#[derive(Clone, Default)]
pub struct Router {
    table: Arc<RwLock<Arc<Table>>>,
    state: Arc<Mutex<State>>,
    /// Where answers' attributions and feedback are kept for every server sharing the
    /// database (the server's conversation store); without it, only in memory.
    ledger: Option<ConversationStore>,
}

impl Router {
    pub fn new(table: Table) -> Router {
        Router { table: Arc::new(RwLock::new(Arc::new(table))), state: Arc::default(), ledger: None }
    }

    /// Keeps attributions and feedback in `store` too, so feedback may reach any server
    /// sharing it and `view_shared` counts everyone's.
    pub fn with_ledger(mut self, store: ConversationStore) -> Router {
        self.ledger = Some(store);
        self
    }

    pub fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Swaps in a reloaded table; requests already routed keep theirs.
    pub fn set_table(&self, table: Table) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `model`'s breaker lets a request through now (a half-open one lets one probe).
    pub fn allow(&self, model: &str) -> bool {
        let settings = self.table().breaker;
        self.state().breakers.entry(model.to_string()).or_default().allow(Instant::now(), &settings)
    }

    /// Counts an attempt on `target` (of `route`), and tells `model`'s breaker when given (a
    /// split counting its variant leaves the breaker to the target's own report).
    pub fn report(&self, route: &str, target: &str, model: Option<&str>, outcome: Outcome) {
        let settings = self.table().breaker;
        let now = Instant::now();
        let mut state = self.state();
        if let Some(model) = model {
            let breaker = state.breakers.entry(model.to_string()).or_default();
            match outcome {
                Outcome::Served(_) => breaker.success(),
                Outcome::Failed { .. } => breaker.failure(now, &settings),
                Outcome::Skipped => {}
            }
        }
        let stats = state.stats.entry((route.to_string(), target.to_string())).or_default();
        match outcome {
            Outcome::Served(s) => {
                stats.requests += 1;
                stats.success(&s);
            }
            Outcome::Failed { kind, moved_on } => {
                stats.requests += 1;
                stats.error(kind);
                stats.fallbacks += u64::from(moved_on);
            }
            Outcome::Skipped => stats.skipped += 1,
        }
    }

    /// A provider's active health check: down opens the breakers of its models that have one.
    pub fn provider_health(&self, provider: &str, result: Result<(), String>) {
        let now = Instant::now();
        let listed: Vec<String> = self.table().providers.get(provider).map(|p| p.models()).unwrap_or_default();
        let mut state = self.state();
        let prefix = format!("{provider}/");
        if result.is_err() {
            for m in listed {
                state.breakers.entry(format!("{prefix}{m}")).or_default();
            }
            for (model, b) in state.breakers.iter_mut() {
                if model.starts_with(&prefix) {
                    b.trip(now);
                }
            }
        }
        let up = result.is_ok();
        state.health.insert(provider.to_string(), (up, now, result.err()));
    }

    /// Remembers which target served `request_id`, for `/api/feedback`: in memory, and in the
    /// ledger before it returns, so that the id a client has been given survives a crash.
    pub async fn remember(&self, request_id: &str, served: Attribution) {
        {
            let mut state = self.state();
            if state.served.insert(request_id.to_string(), served.clone()).is_none() {
                state.order.push_back(request_id.to_string());
            }
            while state.order.len() > FEEDBACK_MEMORY {
                if let Some(old) = state.order.pop_front() {
                    state.served.remove(&old);
                }
            }
        }
        if let Some(ledger) = &self.ledger {
            if let Err(e) = ledger.remember_served(request_id, &served).await {
                tracing::warn!(request_id = %request_id, "could not record which target answered, for feedback: {e}");
            }
        }
    }

    /// Attaches an outcome to the variant and target that served `request_id`: found in this
    /// server's memory, else in the ledger (another server may have served it). `None` when
    /// nobody knows the id.
    pub async fn feedback(&self, request_id: &str, score: Option<f64>, label: Option<&str>) -> Result<Option<Attribution>, ConversationError> {
        let known = self.state().served.get(request_id).cloned();
        let a = match (known, &self.ledger) {
            (Some(a), _) => a,
            (None, Some(ledger)) => match ledger.served(request_id).await? {
                Some(a) => a,
                None => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        if let Some(ledger) = &self.ledger {
            ledger.add_feedback(request_id, a.rows(), score, label.map(str::to_string)).await?;
        }
        let mut state = self.state();
        for row in a.rows() {
            state.stats.entry(row).or_default().feedback(score, label);
        }
        Ok(Some(a))
    }

    /// [`Router::view`] with each target's feedback as the ledger counts it over every server;
    /// this server's own counts, and the ledger's error, when it can't be read.
    pub async fn view_shared(&self) -> Value {
        let mut view = self.view();
        let Some(ledger) = &self.ledger else { return view };
        match ledger.feedback_totals().await {
            Ok(totals) => {
                for route in view["routes"].as_array_mut().into_iter().flatten() {
                    let name = route["name"].as_str().unwrap_or_default().to_string();
                    for t in route["targets"].as_array_mut().into_iter().flatten() {
                        let target = t["name"].as_str().unwrap_or_default().to_string();
                        let total = totals.get(&(name.clone(), target)).cloned().unwrap_or_default();
                        let n = |v: i64| u64::try_from(v).unwrap_or(0);
                        let labels = total.labels.iter().map(|(l, c)| (l.clone(), n(*c))).collect();
                        t["feedback"] = stats::feedback_view(n(total.count), n(total.scored), total.score_sum, &labels);
                    }
                }
            }
            Err(e) => view["feedback_error"] = json!(e.to_string()),
        }
        view
    }

    /// `GET /api/routes`: each route's targets with weights, breaker states and counts, and
    /// the providers with their models and health.
    pub fn view(&self) -> Value {
        let table = self.table();
        let now = Instant::now();
        let mut state = self.state();
        let routes: Vec<Value> = table
            .routes
            .values()
            .map(|r| {
                let targets: Vec<Value> = r
                    .targets
                    .iter()
                    .map(|t| {
                        let breaker = state.breakers.entry(t.model.clone()).or_default();
                        let (b, trips) = (breaker.state(now, &table.breaker).as_str(), breaker.trips);
                        let mut v = state.stats.get(&(r.name.clone(), t.name.clone())).map(Stats::view).unwrap_or_else(|| Stats::default().view());
                        v["name"] = json!(t.name);
                        v["model"] = json!(t.model);
                        v["kind"] = json!(if table.routes.contains_key(&t.model) { "route" } else if table.remote(&t.model).is_some() { "provider" } else { "local" });
                        if r.strategy == Strategy::Split {
                            v["weight"] = json!(t.weight);
                        }
                        v["breaker"] = json!(b);
                        v["breaker_trips"] = json!(trips);
                        v
                    })
                    .collect();
                json!({ "name": r.name, "strategy": r.strategy.as_str(), "targets": targets })
            })
            .collect();
        let providers: Vec<Value> = table
            .providers
            .values()
            .map(|p| {
                let health = state.health.get(p.name()).map(|(up, at, err)| json!({ "up": up, "checked_s_ago": now.duration_since(*at).as_secs(), "error": err }));
                json!({
                    "name": p.name(),
                    "kind": p.spec.kind.as_str(),
                    "url": p.spec.url,
                    "models": p.models(),
                    "listing_error": p.listing_error(),
                    "in_flight": p.in_flight(),
                    "max_concurrent": p.spec.max_concurrent,
                    "price": { "input_per_1k": p.spec.input_per_1k, "output_per_1k": p.spec.output_per_1k },
                    "health": health,
                    "fleet": p.fleet_view(),
                })
            })
            .collect();
        json!({ "routes": routes, "providers": providers, "breaker": { "failures": table.breaker.failures, "cooldown_s": table.breaker.cooldown.as_secs_f64() }, "cpu_hour_price": table.cpu_hour_price })
    }

    /// The cost of an answer from `model`: a provider's token prices, or CPU time at the
    /// configured price per CPU-hour for a local model.
    pub fn cost(&self, model: &str, input_tokens: u64, output_tokens: u64, busy: Duration) -> f64 {
        let table = self.table();
        match table.remote(model) {
            Some(m) => {
                let s = &m.provider().spec;
                (input_tokens as f64 * s.input_per_1k + output_tokens as f64 * s.output_per_1k) / 1000.0
            }
            None => busy.as_secs_f64() * table.threads * table.cpu_hour_price / 3600.0,
        }
    }
}

/// How soon a provider whose listing failed is asked again.
const LISTING_RETRY: Duration = Duration::from_secs(5);

/// Keeps providers' model lists fresh and runs their active health checks, each on its own
/// period, until `shutdown`. A reloaded table's providers are picked up at the next tick; a
/// provider is listed at once when it first appears.
pub async fn upkeep(router: Router, shutdown: impl std::future::Future<Output = ()>) {
    let mut listed: HashMap<String, Instant> = HashMap::new();
    let mut checked: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        for p in router.table().providers.values() {
            let key = format!("{} {}", p.name(), p.spec.url);
            // A failed listing is tried again soon: the provider may just be starting.
            let due = |at: &Instant| now.duration_since(*at) >= p.spec.refresh || (p.listing_error().is_some() && now.duration_since(*at) >= LISTING_RETRY);
            if p.spec.models.is_none() && listed.get(&key).is_none_or(due) {
                listed.insert(key.clone(), now);
                let p = Arc::clone(p);
                tokio::spawn(async move {
                    if let Err(e) = p.refresh().await {
                        tracing::warn!(provider = %p.name(), "could not list the provider's models: {e}");
                    }
                });
            }
            if let Some(period) = p.spec.health_check {
                if checked.get(&key).is_none_or(|at| now.duration_since(*at) >= period) {
                    checked.insert(key, now);
                    let (p, router) = (Arc::clone(p), router.clone());
                    tokio::spawn(async move {
                        let result = p.check().await;
                        if let Err(e) = &result {
                            tracing::warn!(provider = %p.name(), "health check failed: {e}");
                        }
                        router.provider_health(p.name(), result);
                    });
                }
            }
        }
    }
}
