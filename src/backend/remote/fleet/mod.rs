//! A fleet: hearth nodes behind one provider (`kind: hearth`). Each request goes to one node,
//! chosen by the fleet's policy, and moves on to the next node if the chosen one fails before
//! its answer starts (unreachable, refusing, at its limit): a node that dies costs only the
//! answers it was streaming.
//!
//! Policies: `round_robin` takes the nodes in turn; `least_loaded` takes the node with the
//! fewest requests queued or running; `cache_aware` sends a request to the node that served
//! the longest prefix of it last (the same conversation, the same system prompt and
//! documents), so that node's saved KV answers the prefix, unless that node has more than
//! `balance_threshold` requests beyond the least-loaded one, which then takes it. Prefixes are
//! compared as running hashes over whole messages (a chat) or 1 KiB pieces (a generate prompt).
//!
//! A node's standing comes from its own `/health` and `/api/metrics` (checked every
//! `health_check`), this front's requests on it, and its breaker (opened by failures as any
//! target's). A node whose check fails is passed over until a check finds it up again; a host
//! name that resolves to several addresses is one node per address, looked up at each check,
//! so a node that joins takes traffic from the next check on.
//!
//! Which node served each prefix is kept by `owners`: in this front's memory, and in Redis
//! when `cache.redis_url` is set, so fronts side by side send a conversation to one node.
//!
//! Must not: retry a request whose answer has started, or keep a prefix's text (only hashes).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use self::owners::PrefixOwners;
use self::owners::prefix_keys;
use super::{describe, Provider, ProviderKind, ProviderSpec};
use crate::backend::breaker::{Breaker, BreakerSettings};
use crate::backend::{EmbedJob, Embedded, EngineError, Event, GenerateJob, ModelInstance, Submitted};

/// How a fleet picks a node for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetPolicy {
    CacheAware,
    RoundRobin,
    LeastLoaded,
}

impl FleetPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FleetPolicy::CacheAware => "cache_aware",
            FleetPolicy::RoundRobin => "round_robin",
            FleetPolicy::LeastLoaded => "least_loaded",
        }
    }
}

/// A fleet as the config file describes it, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSpec {
    /// The nodes' base URLs as configured, without a trailing slash.
    pub nodes: Vec<String>,
    pub policy: FleetPolicy,
    /// Requests the node holding a prefix may have beyond the least-loaded node and still
    /// take the request (`cache_aware`).
    pub balance_threshold: usize,
    /// The nodes' breakers.
    pub breaker: BreakerSettings,
    /// The Redis (`cache.redis_url`) where fronts share which node served each prefix.
    pub owners_redis: Option<String>,
}

/// How long one node's check may take.
const CHECK_WAIT: Duration = Duration::from_secs(5);

/// A node as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Standing {
    /// Up at its last check and its breaker not open.
    pub usable: bool,
    /// Requests queued or running on it.
    pub load: usize,
}

/// The nodes to try, in order (indexes into `standing`): the usable ones as the policy ranks
/// them, then, only when none is usable, all the others (the last view may be stale). `turn`
/// rotates ties, so equal nodes share the traffic.
pub(super) fn order(policy: FleetPolicy, standing: &[Standing], owner: Option<usize>, turn: usize, balance_threshold: usize) -> Vec<usize> {
    let n = standing.len();
    if n == 0 {
        return Vec::new();
    }
    let mut usable: Vec<usize> = (0..n).filter(|&i| standing[i].usable).collect();
    if usable.is_empty() {
        return (0..n).map(|i| (turn + i) % n).collect();
    }
    // Taken in turn among the usable nodes, so one that is down doesn't double its
    // neighbour's share.
    let shift = turn % usable.len();
    usable.rotate_left(shift);
    match policy {
        FleetPolicy::RoundRobin => {}
        FleetPolicy::LeastLoaded => usable.sort_by_key(|&i| standing[i].load),
        FleetPolicy::CacheAware => {
            usable.sort_by_key(|&i| standing[i].load);
            let least = standing[usable[0]].load;
            if let Some(at) = owner.and_then(|o| usable.iter().position(|&i| i == o)) {
                if standing[usable[at]].load <= least + balance_threshold {
                    let o = usable.remove(at);
                    usable.insert(0, o);
                }
            }
        }
    }
    usable
}

/// One node: a hearth server spoken to in Ollama's API.
struct Node {
    url: String,
    provider: Arc<Provider>,
    /// This front's requests on it now.
    in_flight: AtomicUsize,
    state: Mutex<NodeState>,
}

#[derive(Default)]
struct NodeState {
    /// Why its last check failed; `None` while up (a node counts as up until checked).
    down: Option<String>,
    /// Requests queued or running on it, by its own metrics at the last check.
    queued: usize,
    breaker: Breaker,
}

impl Node {
    fn state(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn standing(&self, now: Instant, breaker: &BreakerSettings) -> Standing {
        let s = self.state();
        let open = s.breaker.state(now, breaker) == crate::backend::breaker::BreakerState::Open;
        Standing { usable: s.down.is_none() && !open, load: s.queued.max(self.in_flight.load(Ordering::Acquire)) }
    }

    /// Its health, then its load. A node found up again after being down starts afresh.
    async fn check(&self) {
        let p = &self.provider;
        let health = async {
            let resp = p.client.get(format!("{}/health", self.url)).timeout(CHECK_WAIT).send().await.map_err(|e| format!("/health: {}", describe(&e)))?;
            if !resp.status().is_success() {
                return Err(format!("/health: HTTP {}", resp.status()));
            }
            Ok(())
        }
        .await;
        let queued = match &health {
            Ok(()) => queued(p, &self.url).await,
            Err(_) => None,
        };
        let mut s = self.state();
        match health {
            Ok(()) => {
                if s.down.take().is_some() {
                    s.breaker.success();
                }
                s.queued = queued.unwrap_or(0);
            }
            Err(e) => s.down = Some(e),
        }
    }

    fn view(&self, now: Instant, breaker: &BreakerSettings) -> Value {
        let s = self.state();
        json!({
            "url": self.url,
            "up": s.down.is_none(),
            "error": s.down,
            "queued": s.queued,
            "in_flight": self.in_flight.load(Ordering::Acquire),
            "breaker": s.breaker.state(now, breaker).as_str(),
            "breaker_trips": s.breaker.trips,
        })
    }
}

/// Requests queued or running on a node, from its `/api/metrics` (`None` if it won't say,
/// for instance when the fleet's key lacks the metrics scope).
async fn queued(p: &Provider, url: &str) -> Option<usize> {
    let resp = p.authorized(p.client.get(format!("{url}/api/metrics"))).timeout(CHECK_WAIT).send().await.ok()?;
    let v: Value = resp.error_for_status().ok()?.json().await.ok()?;
    Some(v["models"].as_array()?.iter().filter_map(|m| m["queue_depth"].as_u64()).sum::<u64>() as usize)
}

/// Counts a request on a node until its answer ends.
struct InFlight(Arc<Node>);

impl InFlight {
    fn new(node: &Arc<Node>) -> InFlight {
        node.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(node))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The fleet behind a `kind: hearth` provider.
pub(super) struct Fleet {
    name: String,
    spec: FleetSpec,
    /// What each node's own provider is made from (its URL and kind replaced).
    template: ProviderSpec,
    key: Option<String>,
    nodes: RwLock<Vec<Arc<Node>>>,
    owners: PrefixOwners,
    turn: AtomicUsize,
}

impl Fleet {
    pub(super) fn new(spec: &ProviderSpec, fleet: FleetSpec, key: Option<String>) -> Result<Fleet, String> {
        let mut template = spec.clone();
        template.kind = ProviderKind::Ollama;
        template.fleet = None;
        let owners = PrefixOwners::new(&spec.name, fleet.owners_redis.as_deref())?;
        let f = Fleet { name: spec.name.clone(), spec: fleet, template, key, nodes: RwLock::default(), owners, turn: AtomicUsize::new(0) };
        let nodes = f.spec.nodes.iter().map(|u| f.node(u)).collect::<Result<Vec<_>, _>>()?;
        *f.nodes.write().unwrap_or_else(PoisonError::into_inner) = nodes;
        Ok(f)
    }

    fn node(&self, url: &str) -> Result<Arc<Node>, String> {
        let mut spec = self.template.clone();
        spec.url = url.to_string();
        spec.name = format!("{}@{url}", self.name);
        let provider = Arc::new(Provider::build(spec, self.key.clone())?);
        Ok(Arc::new(Node { url: url.to_string(), provider, in_flight: AtomicUsize::new(0), state: Mutex::default() }))
    }

    fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The nodes to try for a request with these prefix keys, in order.
    async fn plan(&self, keys: &[u64]) -> Vec<Arc<Node>> {
        let owner = match self.spec.policy {
            FleetPolicy::CacheAware => self.owners.owner(keys).await,
            _ => None,
        };
        let nodes = self.nodes();
        let now = Instant::now();
        let standing: Vec<Standing> = nodes.iter().map(|n| n.standing(now, &self.spec.breaker)).collect();
        let owner = owner.and_then(|url| nodes.iter().position(|n| *n.url == *url));
        let turn = self.turn.fetch_add(1, Ordering::AcqRel);
        order(self.spec.policy, &standing, owner, turn, self.spec.balance_threshold).into_iter().map(|i| Arc::clone(&nodes[i])).collect()
    }

    /// Whether a node may take a request now (a half-open breaker lets one probe through).
    fn allow(&self, node: &Node) -> bool {
        node.state().breaker.allow(Instant::now(), &self.spec.breaker)
    }

    fn failed(&self, node: &Node, e: &EngineError) {
        if e.is_target_failure() {
            node.state().breaker.failure(Instant::now(), &self.spec.breaker);
        }
    }

    /// Runs `call` on `model` at each node in the plan's order until one takes it; returns
    /// that node, its count of this request (held until the answer ends) and what it gave.
    /// A failure another node may not have moves on; one that is the request's own does not.
    async fn first_taker<T, Fut>(&self, keys: &[u64], model: &str, mut call: impl FnMut(Arc<super::RemoteModel>) -> Fut) -> Result<(Arc<Node>, InFlight, T), EngineError>
    where
        Fut: std::future::Future<Output = Result<T, EngineError>>,
    {
        let mut last = None;
        for node in self.plan(keys).await {
            if !self.allow(&node) {
                continue;
            }
            let running = InFlight::new(&node);
            match call(node.provider.model(model)).await {
                Ok(answer) => {
                    node.state().breaker.success();
                    return Ok((node, running, answer));
                }
                Err(e) if moves_on(&e) => {
                    tracing::warn!(fleet = %self.name, node = %node.url, "node failed before answering, trying the next: {e}");
                    self.failed(&node, &e);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| self.none_up()))
    }

    /// Starts `job` on the first node that takes it; `hold` (the fleet's own limit) is kept
    /// until the answer ends.
    pub(super) async fn generate<T: Send + 'static>(self: Arc<Self>, model: String, job: GenerateJob, hold: T) -> Result<Submitted, EngineError> {
        let keys = prefix_keys(&model, &job.prompt);
        let (node, running, mut submitted) = self.first_taker(&keys, &model, |m| m.generate(job.clone())).await?;
        if self.spec.policy == FleetPolicy::CacheAware {
            self.owners.record(&keys, &node.url);
        }
        submitted.events = hold_until_done(submitted.events, (running, hold));
        submitted.answered_by = Some(format!("{}@{}/{model}", self.name, node.url));
        Ok(submitted)
    }

    pub(super) async fn embed(self: Arc<Self>, model: String, job: EmbedJob) -> Result<Embedded, EngineError> {
        self.first_taker(&[], &model, |m| m.embed(job.clone())).await.map(|(_, _, embedded)| embedded)
    }

    fn none_up(&self) -> EngineError {
        EngineError::Upstream { target: self.name.clone(), status: 503, message: format!("no node of fleet {} is taking requests (all down or their breakers open)", self.name) }
    }

    /// Looks the nodes up again (a host name may now stand for other addresses), then checks
    /// each. Fails only when no node is up.
    pub(super) async fn check(&self) -> Result<(), String> {
        self.discover().await;
        let nodes = self.nodes();
        join_all(nodes.iter().map(|n| n.check())).await;
        let errors: Vec<String> = nodes.iter().filter_map(|n| n.state().down.clone().map(|e| format!("{}: {e}", n.url))).collect();
        if errors.len() == nodes.len() {
            return Err(format!("no node is up ({})", errors.join("; ")));
        }
        Ok(())
    }

    /// Each configured URL whose host is a name resolving to several addresses becomes one
    /// node per address; every other URL is one node as written. Nodes keep their state
    /// across lookups.
    async fn discover(&self) {
        let old = self.nodes();
        let mut urls = Vec::new();
        for configured in &self.spec.nodes {
            let Some((scheme, host, port)) = host_of(configured) else {
                urls.push(configured.clone());
                continue;
            };
            if host.parse::<IpAddr>().is_ok() {
                urls.push(configured.clone());
                continue;
            }
            match tokio::time::timeout(CHECK_WAIT, tokio::net::lookup_host(format!("{host}:{port}"))).await {
                Ok(Ok(addrs)) => {
                    let mut addrs: Vec<_> = addrs.collect();
                    addrs.sort();
                    addrs.dedup();
                    if addrs.len() <= 1 {
                        urls.push(configured.clone());
                    } else {
                        urls.extend(addrs.iter().map(|a| format!("{scheme}://{a}")));
                    }
                }
                // Unresolvable now: one node as written, which its check will show down.
                _ => urls.push(configured.clone()),
            }
        }
        urls.dedup();
        let mut nodes = Vec::new();
        for url in urls {
            match old.iter().find(|n| n.url == url) {
                Some(n) => nodes.push(Arc::clone(n)),
                None => match self.node(&url) {
                    Ok(n) => {
                        tracing::info!(fleet = %self.name, node = %url, "node joined");
                        nodes.push(n);
                    }
                    Err(e) => tracing::warn!(fleet = %self.name, node = %url, "{e}"),
                },
            }
        }
        *self.nodes.write().unwrap_or_else(PoisonError::into_inner) = nodes;
    }

    /// The models any node that is up serves.
    pub(super) async fn list(&self) -> Result<Vec<String>, String> {
        let nodes: Vec<_> = self.nodes().into_iter().filter(|n| n.state().down.is_none()).collect();
        let lists = join_all(nodes.iter().map(|n| n.provider.list())).await;
        let mut models: Vec<String> = lists.iter().filter_map(|l| l.as_ref().ok()).flatten().cloned().collect();
        if models.is_empty() {
            if let Some(Err(e)) = lists.into_iter().find(Result::is_err) {
                return Err(e);
            }
        }
        models.sort();
        models.dedup();
        Ok(models)
    }

    /// `/api/routes`' view of the fleet: its policy and each node's standing.
    pub(super) fn view(&self) -> Value {
        let now = Instant::now();
        json!({
            "policy": self.spec.policy.as_str(),
            "balance_threshold": self.spec.balance_threshold,
            "prefix_owners": if self.owners.is_shared() { "redis" } else { "local" },
            "nodes": self.nodes().iter().map(|n| n.view(now, &self.spec.breaker)).collect::<Vec<_>>(),
        })
    }
}

/// Another node may answer where this one failed: it could not be reached or was busy, or
/// it does not have the model.
fn moves_on(e: &EngineError) -> bool {
    e.is_target_failure() || matches!(e, EngineError::Upstream { status: 404, .. })
}

/// (scheme, host, port) of a node URL.
fn host_of(url: &str) -> Option<(String, String, u16)> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?.trim_start_matches('[').trim_end_matches(']').to_string();
    Some((u.scheme().to_string(), host, u.port_or_known_default()?))
}

/// Passes the answer's events on, keeping `hold` until it ends or the client leaves (then
/// the node's stream is dropped, and with it the node's work).
fn hold_until_done<T: Send + 'static>(mut events: UnboundedReceiver<Event>, hold: T) -> UnboundedReceiver<Event> {
    let (tx, rx) = unbounded_channel();
    tokio::spawn(async move {
        let _hold = hold;
        loop {
            tokio::select! {
                () = tx.closed() => return,
                e = events.recv() => match e {
                    Some(e) => {
                        if tx.send(e).is_err() {
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    });
    rx
}

mod owners;
#[cfg(test)]
mod tests;
