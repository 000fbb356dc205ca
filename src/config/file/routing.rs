//! `providers:`, `routes:` and `routing:`: other servers whose models hearth serves as
//! `provider/model`, and named virtual models that fall back or split between targets.
//!
//! ```yaml
//! providers:
//!   lan:
//!     kind: ollama                  # ollama | openai | anthropic
//!     url: http://127.0.0.1:11500
//!     api_key_env: LAN_KEY          # the key's environment variable, never the key
//!     models: [smollm2:135m]        # else asked from the server every `refresh`
//!     timeouts: { connect: 5s, first_byte: 2m, total: 10m }
//!     max_concurrent: 16
//!     price: { input_per_1k: 0.0005, output_per_1k: 0.0015 }
//!   fleet:
//!     kind: hearth                  # hearth nodes, one picked per request
//!     nodes: [http://10.0.0.1:11434, http://10.0.0.2:11434]
//!     policy: cache_aware           # cache_aware | round_robin | least_loaded
//!     balance_threshold: 4          # cache_aware: extra load the prefix's node may have
//! routes:
//!   chat:
//!     strategy: fallback            # fallback | split
//!     targets:
//!       - model: lan/smollm2:135m
//!       - model: smollm2:135m
//! routing:
//!   breaker: { failures: 3, cooldown: 10s }
//!   cpu_hour_price: 0.05
//! ```
//!
//! A target's model is `provider/model` when its first part names a provider, a fallback
//! route's name inside a split, or else a local model name (normalized).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{option_patch, resolve, scalar, ConfigError};
use crate::backend::remote::fleet::{FleetPolicy, FleetSpec};
use crate::backend::remote::{ProviderKind, ProviderSpec, Timeouts};
use crate::routing::breaker::BreakerSettings;
use crate::routing::{RouteSpec, RoutingConfig, Strategy, TargetSpec};
use crate::service::catalog::Persona;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    kind: RawKind,
    url: Option<String>,
    nodes: Option<Vec<String>>,
    policy: Option<RawPolicy>,
    #[serde(default, deserialize_with = "scalar::count")]
    balance_threshold: Option<usize>,
    api_key_env: Option<String>,
    models: Option<Vec<String>>,
    #[serde(default, deserialize_with = "scalar::duration")]
    refresh: Option<Duration>,
    timeouts: Option<RawTimeouts>,
    #[serde(default, deserialize_with = "scalar::count")]
    max_concurrent: Option<usize>,
    price: Option<RawPrice>,
    #[serde(default, deserialize_with = "scalar::duration")]
    health_check: Option<Duration>,
    #[serde(default, deserialize_with = "scalar::count")]
    max_tokens: Option<usize>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Ollama,
    Openai,
    Anthropic,
    Hearth,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawPolicy {
    CacheAware,
    RoundRobin,
    LeastLoaded,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default, deserialize_with = "scalar::duration")]
    connect: Option<Duration>,
    #[serde(default, deserialize_with = "scalar::duration")]
    first_byte: Option<Duration>,
    #[serde(default, deserialize_with = "scalar::duration")]
    total: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    #[serde(default, deserialize_with = "scalar::price")]
    input_per_1k: Option<f64>,
    #[serde(default, deserialize_with = "scalar::price")]
    output_per_1k: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    strategy: RawStrategy,
    targets: Vec<RawTarget>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawStrategy {
    Fallback,
    Split,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    model: String,
    name: Option<String>,
    weight: Option<u32>,
    options: Option<serde_json::Map<String, Value>>,
    persona: Option<String>,
    adapter: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    breaker: Option<RawBreaker>,
    #[serde(default, deserialize_with = "scalar::price")]
    cpu_hour_price: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    #[serde(default, deserialize_with = "scalar::count")]
    failures: Option<usize>,
    #[serde(default, deserialize_with = "scalar::duration")]
    cooldown: Option<Duration>,
}

type At<'a> = &'a dyn Fn(&[&str], String) -> ConfigError;

/// Names that go into URLs' paths and metric labels: short and plain.
fn plain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub(super) fn routing(
    providers: Option<BTreeMap<String, RawProvider>>,
    routes: Option<BTreeMap<String, RawRoute>>,
    settings: Option<RawRouting>,
    personas: &BTreeMap<String, Persona>,
    base: Option<&Path>,
    at: At<'_>,
) -> Result<RoutingConfig, ConfigError> {
    let providers = providers
        .unwrap_or_default()
        .into_iter()
        .map(|(name, raw)| provider(name, raw, at))
        .collect::<Result<Vec<_>, _>>()?;
    let raw_routes = routes.unwrap_or_default();
    let strategies: BTreeMap<String, RawStrategy> = raw_routes.iter().map(|(n, r)| (n.clone(), r.strategy)).collect();
    let mut routes = Vec::new();
    for (name, raw) in raw_routes {
        routes.push(route(&name, raw, &providers, &strategies, personas, base, at)?);
    }
    let settings = settings.unwrap_or_default();
    let defaults = BreakerSettings::default();
    let raw_breaker = settings.breaker.unwrap_or_default();
    let failures = raw_breaker.failures.unwrap_or(defaults.failures as usize);
    if failures == 0 {
        return Err(at(&["routing", "breaker", "failures"], "must be at least 1".into()));
    }
    let breaker = BreakerSettings { failures: failures.min(u32::MAX as usize) as u32, cooldown: raw_breaker.cooldown.unwrap_or(defaults.cooldown) };
    let mut providers = providers;
    for fleet in providers.iter_mut().filter_map(|p| p.fleet.as_mut()) {
        fleet.breaker = breaker;
    }
    Ok(RoutingConfig { providers, routes, breaker, cpu_hour_price: settings.cpu_hour_price.unwrap_or(0.0) })
}

fn provider(name: String, raw: RawProvider, at: At<'_>) -> Result<ProviderSpec, ConfigError> {
    let here = |key: &str, message: String| if key.is_empty() { at(&["providers", &name], message) } else { at(&["providers", &name, key], message) };
    if !plain(&name) {
        return Err(here("", "a provider's name is 1 to 64 letters, digits, '.', '_' or '-' (its models are addressed as NAME/model)".into()));
    }
    let fleet = matches!(raw.kind, RawKind::Hearth);
    let (url, fleet) = match (fleet, raw.url, raw.nodes) {
        (false, Some(url), None) if raw.policy.is_none() && raw.balance_threshold.is_none() => (base_url(&url).map_err(|e| here("url", e))?, None),
        (false, None, _) => return Err(here("url", "is required (the server's base URL)".into())),
        (false, Some(_), _) => return Err(here("nodes", "nodes, policy and balance_threshold are for kind: hearth (a fleet)".into())),
        (true, None, Some(nodes)) if !nodes.is_empty() => {
            let nodes = nodes.iter().map(|n| base_url(n)).collect::<Result<Vec<_>, _>>().map_err(|e| here("nodes", e))?;
            let policy = match raw.policy.unwrap_or(RawPolicy::CacheAware) {
                RawPolicy::CacheAware => FleetPolicy::CacheAware,
                RawPolicy::RoundRobin => FleetPolicy::RoundRobin,
                RawPolicy::LeastLoaded => FleetPolicy::LeastLoaded,
            };
            let spec = FleetSpec { nodes: nodes.clone(), policy, balance_threshold: raw.balance_threshold.unwrap_or(4), breaker: BreakerSettings::default(), owners_redis: None };
            (nodes.join(", "), Some(spec))
        }
        (true, Some(_), _) => return Err(here("url", "a fleet (kind: hearth) lists its nodes' URLs under nodes, not url".into())),
        (true, None, _) => return Err(here("nodes", "a fleet (kind: hearth) needs at least one node URL".into())),
    };
    if let Some(var) = &raw.api_key_env {
        if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || var.as_bytes()[0].is_ascii_digit() {
            return Err(here("api_key_env", format!("{var:?} is not an environment variable's name (the key itself never goes in the file)")));
        }
    }
    if let Some(models) = &raw.models {
        if models.iter().any(|m| m.trim().is_empty()) {
            return Err(here("models", "a model name may not be empty".into()));
        }
    }
    let t = raw.timeouts.unwrap_or_default();
    let d = Timeouts::default();
    let timeouts = Timeouts { connect: t.connect.unwrap_or(d.connect), first_byte: t.first_byte.unwrap_or(d.first_byte), total: t.total.filter(|t| !t.is_zero()) };
    if timeouts.connect.is_zero() || timeouts.first_byte.is_zero() {
        return Err(here("timeouts", "connect and first_byte must be more than 0".into()));
    }
    let max_concurrent = raw.max_concurrent.unwrap_or(64);
    if max_concurrent == 0 {
        return Err(here("max_concurrent", "must be at least 1".into()));
    }
    let price = raw.price.unwrap_or_default();
    Ok(ProviderSpec {
        kind: match raw.kind {
            RawKind::Ollama => ProviderKind::Ollama,
            RawKind::Openai => ProviderKind::OpenAi,
            RawKind::Anthropic => ProviderKind::Anthropic,
            RawKind::Hearth => ProviderKind::Hearth,
        },
        url,
        api_key_env: raw.api_key_env,
        timeouts,
        max_concurrent: max_concurrent.min(1 << 16),
        input_per_1k: price.input_per_1k.unwrap_or(0.0),
        output_per_1k: price.output_per_1k.unwrap_or(0.0),
        models: raw.models,
        // A fleet's nodes come and go: its listing and its nodes' standing are kept fresh.
        refresh: raw.refresh.filter(|r| !r.is_zero()).unwrap_or(Duration::from_secs(if fleet.is_some() { 30 } else { 300 })),
        health_check: match (raw.health_check, &fleet) {
            (Some(h), _) => Some(h).filter(|h| !h.is_zero()),
            (None, Some(_)) => Some(FLEET_CHECK),
            (None, None) => None,
        },
        max_tokens: raw.max_tokens.unwrap_or(4096).clamp(1, u32::MAX as usize) as u32,
        fleet,
        name,
    })
}

/// How often a fleet's nodes are checked unless `health_check` says otherwise: their load
/// steers the next requests.
const FLEET_CHECK: Duration = Duration::from_secs(2);

/// A server's base URL, checked, without a trailing slash.
fn base_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{raw:?}: must be an http:// or https:// URL with a host"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(format!("{raw:?} may not hold credentials or a query: put the key's variable in api_key_env"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn route(
    name: &str,
    raw: RawRoute,
    providers: &[ProviderSpec],
    strategies: &BTreeMap<String, RawStrategy>,
    personas: &BTreeMap<String, Persona>,
    base: Option<&Path>,
    at: At<'_>,
) -> Result<RouteSpec, ConfigError> {
    if !plain(name) || name.contains(':') {
        return Err(at(&["routes", name], "a route's name is 1 to 64 letters, digits, '.', '_' or '-' (clients use it as the model)".into()));
    }
    if providers.iter().any(|p| p.name == name) {
        return Err(at(&["routes", name], format!("{name} is also a provider's name")));
    }
    let strategy = match raw.strategy {
        RawStrategy::Fallback => Strategy::Fallback,
        RawStrategy::Split => Strategy::Split,
    };
    if raw.targets.is_empty() {
        return Err(at(&["routes", name, "targets"], "a route needs at least one target".into()));
    }
    let mut targets: Vec<TargetSpec> = Vec::new();
    for (i, t) in raw.targets.into_iter().enumerate() {
        let here = |message: String| at(&["routes", name, "targets"], format!("target {}: {message}", i + 1));
        let model = t.model.trim().to_string();
        let first = model.split('/').next().unwrap_or("");
        let model = if model.contains('/') && providers.iter().any(|p| p.name == first) {
            if model.len() == first.len() + 1 {
                return Err(here(format!("{model:?} names no model on provider {first}")));
            }
            model
        } else if let Some(s) = strategies.get(&model) {
            match (strategy, s) {
                (Strategy::Split, RawStrategy::Fallback) => model,
                (Strategy::Split, RawStrategy::Split) => return Err(here(format!("{model} is a split: a split's variant may be a fallback route, not another split"))),
                (Strategy::Fallback, _) => return Err(here(format!("{model} is a route: a fallback lists models; put it in a split instead"))),
            }
        } else {
            crate::store::normalize_name(&model).map_err(|e| here(format!("{model:?} is neither provider/model nor a local model name: {e}")))?
        };
        if let Some(p) = t.persona.as_deref() {
            let known = crate::store::normalize_name(p).ok().is_some_and(|n| personas.contains_key(&n));
            if !known {
                return Err(here(format!("persona {p:?} is not in personas")));
            }
        }
        let options = option_patch(&t.options.unwrap_or_default(), &["routes", name, "targets", "options"], at)?;
        let adapter = t.adapter.map(|p| resolve(base, p));
        if let (Some(a), Some(_)) = (&adapter, base) {
            if !a.is_file() {
                return Err(here(format!("adapter {} is not a file", a.display())));
            }
        }
        let weight = match (strategy, t.weight) {
            (Strategy::Split, None) => return Err(here("a split's target needs a weight".into())),
            (_, w) => w.unwrap_or(1),
        };
        let target_name = t.name.unwrap_or_else(|| model.clone());
        if targets.iter().any(|o| o.name == target_name) {
            return Err(here(format!("{target_name} appears twice; give one of them a `name`")));
        }
        targets.push(TargetSpec { name: target_name, model, weight, options, persona: t.persona, adapter });
    }
    if strategy == Strategy::Split && targets.iter().all(|t| t.weight == 0) {
        return Err(at(&["routes", name, "targets"], "a split needs a weight above 0".into()));
    }
    Ok(RouteSpec { name: name.to_string(), strategy, targets })
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const FILE: &str = "providers:\n  lan:\n    kind: ollama\n    url: http://127.0.0.1:11500/\n    api_key_env: LAN_KEY\n  llama:\n    kind: openai\n    url: http://127.0.0.1:8080\n    models: [smol]\n    price: { input_per_1k: 0.5, output_per_1k: 1.5 }\nroutes:\n  chat:\n    strategy: fallback\n    targets:\n      - model: lan/smollm2:135m\n      - model: smollm2:135m\n  ab:\n    strategy: split\n    targets:\n      - { model: smollm2:135m, weight: 70, options: { temperature: 0 } }\n      - { model: chat, weight: 30 }\nrouting:\n  breaker: { failures: 2, cooldown: 30s }\n";

    #[test]
    fn providers_and_routes_parse() {
        let c = parse(FILE, "t.yaml", &|_| None).expect("valid").routing;
        assert_eq!(c.providers.len(), 2);
        let lan = c.providers.iter().find(|p| p.name == "lan").expect("lan");
        assert_eq!(lan.url, "http://127.0.0.1:11500");
        assert_eq!(lan.api_key_env.as_deref(), Some("LAN_KEY"));
        assert_eq!(c.providers.iter().find(|p| p.name == "llama").expect("llama").output_per_1k, 1.5);
        let ab = c.routes.iter().find(|r| r.name == "ab").expect("ab");
        assert_eq!((ab.targets[0].weight, ab.targets[0].options.temperature), (70, Some(0.0)));
        assert_eq!(ab.targets[1].model, "chat");
        let chat = c.routes.iter().find(|r| r.name == "chat").expect("chat");
        assert_eq!(chat.targets.iter().map(|t| t.model.as_str()).collect::<Vec<_>>(), ["lan/smollm2:135m", "smollm2:135m"]);
        assert_eq!((c.breaker.failures, c.breaker.cooldown.as_secs()), (2, 30));
    }

    #[test]
    fn a_fleet_lists_its_nodes_and_policy() {
        let text = "providers:\n  fleet:\n    kind: hearth\n    nodes: [http://127.0.0.1:11501/, http://127.0.0.1:11502]\n    policy: round_robin\nrouting:\n  breaker: { failures: 5, cooldown: 1s }\n";
        let c = parse(text, "t.yaml", &|_| None).expect("valid").routing;
        let p = &c.providers[0];
        let f = p.fleet.as_ref().expect("a fleet");
        assert_eq!(f.nodes, ["http://127.0.0.1:11501", "http://127.0.0.1:11502"]);
        assert_eq!((f.policy, f.balance_threshold, f.breaker.failures), (crate::backend::remote::fleet::FleetPolicy::RoundRobin, 4, 5));
        // Checked every 2 s unless the file says otherwise: the nodes' load steers requests.
        assert_eq!(p.health_check, Some(std::time::Duration::from_secs(2)));
        let c = parse("providers:\n  f:\n    kind: hearth\n    nodes: [http://a:1]\n", "t.yaml", &|_| None).expect("valid").routing;
        assert_eq!(c.providers[0].fleet.as_ref().map(|f| f.policy), Some(crate::backend::remote::fleet::FleetPolicy::CacheAware));
    }

    #[test]
    fn bad_routing_names_its_place() {
        let cases = [
            ("providers:\n  lan:\n    kind: grpc\n    url: http://x\n", "t.yaml:3:", "unknown variant"),
            ("providers:\n  lan:\n    kind: ollama\n    url: ftp://x\n", "t.yaml:4:", "http://"),
            ("providers:\n  lan:\n    kind: openai\n    url: http://x\n    api_key_env: sk-123\n", "t.yaml:5:", "never goes in the file"),
            ("providers:\n  lan:\n    kind: openai\n    url: http://u:p@x\n", "t.yaml:4:", "credentials"),
            ("routes:\n  r:\n    strategy: split\n    targets:\n      - model: smollm2:135m\n", "t.yaml:4:", "needs a weight"),
            ("routes:\n  r:\n    strategy: fallback\n    targets: []\n", "t.yaml:4:", "at least one target"),
            ("routes:\n  r:\n    strategy: fallback\n    targets:\n      - model: a\n      - model: a\n", "t.yaml:4:", "appears twice"),
            ("routes:\n  r:\n    strategy: fallback\n    targets:\n      - model: a\n        options: { temprature: 1 }\n", "t.yaml:", "unknown Ollama option"),
            ("routes:\n  r:\n    strategy: fallback\n    targets:\n      - model: a\n        persona: ghost\n", "t.yaml:4:", "not in personas"),
            ("routes:\n  r:\n    strategy: fallback\n    targets:\n      - model: s\n  s:\n    strategy: fallback\n    targets:\n      - model: a\n", "t.yaml:4:", "is a route"),
            ("routing:\n  breaker:\n    failures: 0\n", "t.yaml:3:", "at least 1"),
            ("providers:\n  f:\n    kind: hearth\n    url: http://x\n", "t.yaml:4:", "under nodes"),
            ("providers:\n  f:\n    kind: hearth\n    nodes: []\n", "t.yaml:4:", "at least one node"),
            ("providers:\n  f:\n    kind: hearth\n    nodes: [http://a, ftp://b]\n", "t.yaml:4:", "\"ftp://b\""),
            ("providers:\n  f:\n    kind: hearth\n    nodes: [http://a]\n    policy: fastest\n", "t.yaml:5:", "unknown variant"),
            ("providers:\n  f:\n    kind: ollama\n    url: http://x\n    policy: round_robin\n", "t.yaml:", "for kind: hearth"),
            ("providers:\n  f:\n    kind: ollama\n", "t.yaml:", "url"),
        ];
        for (text, place, says) in cases {
            let e = parse(text, "t.yaml", &|_| None).expect_err(says).to_string();
            assert!(e.starts_with(place) && e.contains(says), "{text}\n-> {e}");
        }
    }
}
