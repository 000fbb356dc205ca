//! `hearth config check FILE`: reads a config file as `serve --config` would (with the
//! environment's overrides) and prints what it sets, or the first problem with its file, line
//! and key.

#![allow(clippy::print_stdout)] // a checking command: its report is the output.

use crate::cli::{ConfigArgs, ConfigCommand};
use crate::config::file;

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Check { file: path } => check(&path),
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = file::load(Some(path), &file::process_env)?;
    println!("{}: ok", path.display());
    let s = &config.server;
    let show = |key: &str, v: Option<String>| {
        if let Some(v) = v {
            println!("  {key}: {v}");
        }
    };
    show("server.host", s.host.map(|h| h.to_string()));
    show("server.models", s.models.as_ref().map(|p| p.display().to_string()));
    show("server.data", s.data.as_ref().map(|p| p.display().to_string()));
    show("server.default_model", s.default_model.clone());
    show("server.max_concurrent_requests", s.max_concurrent_requests.map(|n| n.to_string()));
    show("server.request_timeout", s.request_timeout.map(|d| humantime::format_duration(d).to_string()));
    show("server.origins", s.origins.as_ref().filter(|o| !o.is_empty()).map(|o| o.join(", ")));
    let c = &config.cache;
    println!(
        "  cache: {} (ttl {}, max {} bytes{})",
        if !c.enabled { "disabled" } else if c.redis_url.is_some() { "redis" } else { "memory" },
        humantime::format_duration(c.ttl),
        c.max_bytes,
        c.redis_url.as_deref().map(|u| format!(", {}", without_password(u))).unwrap_or_default()
    );
    let personas: Vec<_> = config.personas.values().map(|p| format!("{} -> {}", p.name, p.model)).collect();
    println!("  personas: {}", if personas.is_empty() { "none".to_string() } else { personas.join(", ") });
    let keys: Vec<_> = config.keys.iter().map(|k| format!("{} [{}]", k.name, k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "))).collect();
    println!("  API keys: {}", if keys.is_empty() { "none (nothing asks for a key; loopback only)".to_string() } else { keys.join(", ") });
    // What serve does with the providers: their keys' variables must be set.
    crate::routing::Table::build(&config.routing, 1.0, &file::process_env).map_err(anyhow::Error::msg)?;
    for p in &config.routing.providers {
        let models = p.models.as_ref().map_or_else(|| "models asked from the server".to_string(), |m| m.join(", "));
        let key = p.api_key_env.as_deref().map(|v| format!(", key from ${v}")).unwrap_or_default();
        println!("  provider {}: {} {}{key} ({models})", p.name, p.kind.as_str(), p.url);
    }
    for r in &config.routing.routes {
        let targets: Vec<_> = r
            .targets
            .iter()
            .map(|t| match r.strategy {
                crate::routing::Strategy::Split => format!("{} {}", t.name, t.weight),
                crate::routing::Strategy::Fallback => t.name.clone(),
            })
            .collect();
        println!("  route {}: {} {}", r.name, r.strategy.as_str(), targets.join(", "));
    }
    let templates: Vec<_> = config.templates.keys().cloned().collect();
    println!("  templates: {}", templates.join(", "));
    let overridden: Vec<_> = file::ENV_VARS.iter().filter(|(name, _)| file::process_env(name).is_some()).map(|(name, _)| *name).collect();
    if !overridden.is_empty() {
        println!("  from the environment: {}", overridden.join(", "));
    }
    Ok(())
}

/// The URL with any credentials masked: a config check's output may be pasted anywhere.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_masked() {
        assert_eq!(super::without_password("redis://user:secret@10.0.0.1:6379/0"), "redis://***@10.0.0.1:6379/0");
        assert_eq!(super::without_password("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
