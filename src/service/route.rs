//! A request through a route: the plan (a split's variant, then its targets in order), one
//! attempt per target until one starts answering, and the answer watched to its end for the
//! target's breaker and counts.
//!
//! A target is passed over when its breaker is open, and a local model that would have to
//! wait for room in the RAM budget is passed over when another target remains. An attempt
//! that fails before its answer starts (the upstream unreachable, refusing, failing or silent;
//! hearth's own 503/507) moves on to the next target; a request the target refuses as the
//! client's fault (400, 404 from a provider) does not. Once the answer has started there is no
//! retry: a failure ends the stream with an error.

use std::time::{Duration, Instant};

use super::{Caller, Outcome, Service, ServiceError, ValidRequest};
use crate::backend::EngineError;
use crate::resources::ResourceError;
use crate::routing::stats::Served;
use crate::routing::{self, Attribution, RouteSpec, Router, Table};
use crate::store::StoreError;

/// How one attempt may differ from a plain request on its model.
#[derive(Default)]
pub struct Attempt {
    /// A LoRA adapter for this target.
    pub adapter: Option<std::path::PathBuf>,
    /// How long a local model may wait for room (`None`: the manager's `load_wait`).
    pub load_wait: Option<Duration>,
    /// Told how the answer ends (a route's target).
    pub watch: Option<Watch>,
}

/// Which target answered a request, for its header, its final object and its feedback.
#[derive(Clone)]
pub struct ServedBy {
    /// The model that answered (`lan/smollm2:135m`, `smollm2:135m`).
    pub target: String,
    /// Targets tried before it, in order.
    pub tried: Vec<String>,
    /// The route, variant and target, when a route chose it.
    pub attribution: Option<Attribution>,
    pub router: Router,
}

impl std::fmt::Debug for ServedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedBy").field("target", &self.target).field("tried", &self.tried).field("attribution", &self.attribution).finish()
    }
}

impl ServedBy {
    /// Remembers the answer under its request id, for `/api/feedback`.
    pub async fn remember(&self, request_id: &str) {
        if let Some(a) = &self.attribution {
            self.router.remember(request_id, a.clone()).await;
        }
    }
}

/// The route `model` names (`chat`, or `chat:latest` as Ollama clients write it).
pub fn find(table: &Table, model: &str) -> Option<std::sync::Arc<RouteSpec>> {
    table.routes.get(model).or_else(|| table.routes.get(model.strip_suffix(":latest")?)).cloned()
}

/// What kind of failure an attempt had, for the counts; `None` when the request itself is
/// at fault and no other target would do better.
fn failure_kind(e: &ServiceError) -> Option<&'static str> {
    match e {
        ServiceError::Engine(EngineError::Upstream { status: 429, .. }) => Some("rate_limited"),
        ServiceError::Engine(EngineError::Upstream { status: 504, .. }) => Some("timeout"),
        ServiceError::Engine(e) | ServiceError::Resource(ResourceError::Engine(e)) if e.is_target_failure() => Some("upstream"),
        ServiceError::Resource(ResourceError::Busy { .. }) => Some("busy"),
        ServiceError::Resource(ResourceError::NoRoom { .. }) => Some("no_room"),
        ServiceError::Resource(ResourceError::TooLarge { .. }) => Some("too_large"),
        ServiceError::Resource(ResourceError::BadModel { .. } | ResourceError::LoadAborted) => Some("load_failed"),
        ServiceError::Resource(ResourceError::Store(StoreError::NotFound(_))) => Some("not_found"),
        _ => None,
    }
}

pub(super) async fn start(service: &Service, table: &Table, route: std::sync::Arc<RouteSpec>, req: ValidRequest, caller: Caller, started: Instant) -> Result<Outcome, ServiceError> {
    let sticky = req.service.sticky.clone().or_else(|| req.service.conversation_id.clone());
    let plan = table.plan(&route, sticky.as_deref());
    let router = &service.router;
    let mut tried: Vec<String> = Vec::new();
    let mut last_error = None;
    let count = plan.targets.len();
    for (i, (target_route, target)) in plan.targets.iter().enumerate() {
        let last = i + 1 == count;
        let report = |outcome| {
            router.report(target_route, &target.name, Some(&target.model), outcome);
            // A split's variant that is a fallback route is counted in the split too.
            if let Some(v) = plan.variant.as_ref().filter(|_| *target_route != route.name) {
                router.report(&route.name, v, None, outcome);
            }
        };
        if !router.allow(&target.model) {
            report(routing::Outcome::Skipped);
            service.metrics.record_route(&route.name, &target.name, "skipped");
            tried.push(target.name.clone());
            continue;
        }
        let mut attempt_req = req.clone();
        attempt_req.model = target.model.clone();
        attempt_req.options = attempt_req.options.over(&target.options);
        if target.persona.is_some() {
            attempt_req.service.persona.clone_from(&target.persona);
        }
        // Another target remains: a local model that can't get room at once is passed over.
        let watch = Watch { router: router.clone(), metrics: service.metrics.clone(), route: route.name.clone(), variant: plan.variant.clone(), target_route: target_route.clone(), target: target.name.clone(), model: target.model.clone(), started: Instant::now() };
        let attempt = Attempt { adapter: target.adapter.clone(), load_wait: (!last).then_some(Duration::ZERO), watch: Some(watch) };
        match service.start_on(attempt_req, caller, started, table, &attempt).await {
            Ok(Outcome::Generating(mut g)) => {
                let attribution = Attribution { route: route.name.clone(), variant: plan.variant.clone(), target: target.name.clone(), target_route: target_route.clone() };
                let answered = g.info.answered_by.clone().unwrap_or_else(|| target.model.clone());
                g.info.served = Some(Box::new(ServedBy { target: answered, tried, attribution: Some(attribution), router: router.clone() }));
                return Ok(Outcome::Generating(g));
            }
            Ok(loaded) => return Ok(loaded),
            Err(e) => {
                let Some(kind) = failure_kind(&e) else { return Err(e) };
                let moved_on = !last;
                if kind == "no_room" && moved_on {
                    // Not the target's fault: no breaker failure, just passed over.
                    report(routing::Outcome::Skipped);
                    service.metrics.record_route(&route.name, &target.name, "skipped");
                } else {
                    report(routing::Outcome::Failed { kind, moved_on });
                    service.metrics.record_route(&route.name, &target.name, kind);
                    if moved_on {
                        service.metrics.record_fallback(&route.name, &target.name);
                    }
                }
                tracing::warn!(route = %route.name, target = %target.name, kind, "target failed before answering: {e}");
                tried.push(target.name.clone());
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| ServiceError::NoTarget { route: route.name.clone(), tried }))
}

/// An answer from a route's target, watched to its end (by `answer::forward` or `replay`):
/// its breaker and counts hear how it went. A client that leaves reports nothing.
#[derive(Clone)]
pub struct Watch {
    router: Router,
    metrics: crate::metrics::Metrics,
    route: String,
    variant: Option<String>,
    target_route: String,
    target: String,
    model: String,
    /// When the attempt started.
    started: Instant,
}

impl Watch {
    pub fn done(self, c: &crate::backend::Completion, first: Option<Instant>) {
        let (input, output) = (u64::from(c.prompt_tokens), u64::from(c.eval_tokens));
        let served = Served {
            latency: self.started.elapsed(),
            ttft: first.map(|f| f.saturating_duration_since(self.started)),
            input_tokens: input,
            output_tokens: output,
            cost: self.router.cost(&self.model, input, output, c.prompt_eval + c.eval),
        };
        self.metrics.record_route_answer(&self.route, &self.target, &served);
        self.report(routing::Outcome::Served(served));
    }

    pub fn failed(self, kind: &'static str) {
        self.metrics.record_route(&self.route, &self.target, kind);
        self.report(routing::Outcome::Failed { kind, moved_on: false });
    }

    fn report(&self, outcome: routing::Outcome) {
        self.router.report(&self.target_route, &self.target, Some(&self.model), outcome);
        if let Some(v) = self.variant.as_ref().filter(|_| self.target_route != self.route) {
            self.router.report(&self.route, v, None, outcome);
        }
    }
}
