//! The model-listing objects of Ollama's API (`/api/tags`, `/api/show`, `/api/ps`), built from
//! the store and GGUF metadata. Also what `hearth list`, `show` and `ps` print from.

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::ollama::timestamp;
use crate::resources::ModelManager;
use crate::store::gguf::GgufInfo;
use crate::store::{ModelEntry, ModelStore};

/// Ollama's `details` object.
pub fn details(info: &GgufInfo) -> Value {
    let arch = info.architecture();
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": info.parameter_size(),
        "quantization_level": info.quantization_level(),
    })
}

fn read_info(store: &ModelStore, entry: &ModelEntry) -> Result<std::sync::Arc<GgufInfo>, ApiError> {
    store.header(&entry.path).map_err(|e| ApiError::bad_request(format!("model '{}': {e}", entry.name)))
}

fn digest_hex(store: &ModelStore, entry: &ModelEntry) -> Result<String, ApiError> {
    let d = store
        .digest(entry)
        .map_err(|e| ApiError::internal(format!("cannot hash model '{}': {e}", entry.name)))?;
    Ok(d.trim_start_matches("sha256:").to_string())
}

/// One `/api/tags` entry.
pub fn tag(store: &ModelStore, entry: &ModelEntry) -> Result<Value, ApiError> {
    let info = read_info(store, entry)?;
    Ok(json!({
        "name": entry.name,
        "model": entry.name,
        "modified_at": timestamp(entry.modified),
        "size": entry.size,
        "digest": digest_hex(store, entry)?,
        "details": details(&info),
        // hearth's own: where the model lives (hearth's store, a drop-in file, Ollama's store).
        "origin": entry.origin.as_str(),
    }))
}

/// `/api/tags` entries for providers' models and routes: no file, so no size or digest.
pub fn routed_tags(table: &crate::routing::Table) -> Vec<Value> {
    let now = timestamp(std::time::SystemTime::now());
    table
        .listed()
        .into_iter()
        .map(|(name, origin)| {
            json!({
                "name": name, "model": name, "modified_at": now, "size": 0, "digest": "",
                "details": { "parent_model": "", "format": "", "family": "", "families": [], "parameter_size": "", "quantization_level": "" },
                "origin": origin,
            })
        })
        .collect()
}

/// `/api/show` for a provider's model (with `remote_model` and `remote_host`, as Ollama shows
/// its cloud models) or a route (with its strategy and targets); `None` for a local name.
pub fn show_routed(table: &crate::routing::Table, name: &str) -> Option<Value> {
    let empty_details = json!({ "parent_model": "", "format": "", "family": "", "families": [], "parameter_size": "", "quantization_level": "" });
    let mut v = json!({ "modelfile": "", "parameters": "", "template": "", "details": empty_details, "model_info": {}, "capabilities": ["completion", "tools"] });
    if let Some(r) = table.routes.get(name) {
        v["route"] = json!({ "strategy": r.strategy.as_str(), "targets": r.targets.iter().map(|t| json!({ "name": t.name, "model": t.model, "weight": t.weight })).collect::<Vec<_>>() });
        return Some(v);
    }
    let remote = table.remote(name)?;
    let (provider, model) = name.split_once('/')?;
    v["remote_model"] = json!(model);
    v["remote_host"] = json!(remote.provider().spec.url);
    v["provider"] = json!({ "name": provider, "kind": remote.provider().spec.kind.as_str() });
    Some(v)
}

pub fn tags(store: &ModelStore) -> Result<Value, ApiError> {
    let models = store
        .list()?
        .iter()
        .filter_map(|e| match tag(store, e) {
            Ok(v) => Some(v),
            Err(err) => {
                // One unreadable file must not hide the others.
                tracing::warn!("skipping {}: {}", e.path.display(), err.message);
                None
            }
        })
        .collect::<Vec<_>>();
    Ok(json!({ "models": models }))
}

/// `/api/show`: template, details, GGUF metadata, capabilities, and hearth's RAM estimate for
/// loading it with `settings`.
pub fn show(store: &ModelStore, entry: &ModelEntry, verbose: bool, settings: &crate::engine::LoadSettings) -> Result<Value, ApiError> {
    let info = read_info(store, entry)?;
    let mut model_info = Map::new();
    for (k, v) in &info.metadata {
        let value = v.to_json();
        // Like Ollama, tokenizer arrays are left out unless asked for.
        if k.starts_with("tokenizer.") && !verbose && (value.is_null() || value.is_array()) {
            model_info.insert(k.clone(), Value::Null);
        } else if k != "tokenizer.chat_template" {
            model_info.insert(k.clone(), value);
        }
    }
    model_info.insert("general.parameter_count".into(), json!(info.parameter_count()));
    let defaults = &entry.defaults;
    let template = defaults.template.as_deref().or(info.chat_template()).unwrap_or_else(|| crate::spec::template::fallback_template(info.architecture()));
    let parameters = parameter_lines(&defaults.parameters);
    // Names, never the machine's paths: `FROM` the model itself, adapters by file name.
    let mut modelfile = format!("# Modelfile generated by hearth\nFROM {}\n", entry.name);
    for a in &defaults.adapters {
        let file = a.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        modelfile.push_str(&format!("ADAPTER {file}\n"));
    }
    if let Some(t) = &defaults.template {
        modelfile.push_str(&format!("TEMPLATE \"\"\"{t}\"\"\"\n"));
    }
    if let Some(s) = &defaults.system {
        modelfile.push_str(&format!("SYSTEM \"\"\"{s}\"\"\"\n"));
    }
    for line in parameters.lines() {
        modelfile.push_str(&format!("PARAMETER {line}\n"));
    }
    let mut out = json!({
        "license": defaults.license.as_deref().or(info.get_str("general.license")).unwrap_or(""),
        "modelfile": modelfile,
        "parameters": parameters,
        "template": template,
        "details": details(&info),
        "model_info": model_info,
        // Ollama's rule: a GGUF that declares a pooling type is an embedding model. Any model can
        // still be used for /api/embed, as in Ollama; and every completion model takes tools,
        // through its template or hearth's tool prompt.
        "capabilities": if info.arch_u64("pooling_type").is_some() { json!(["embedding"]) } else { json!(["completion", "tools"]) },
        "modified_at": timestamp(entry.modified),
        "ram_estimate": ram_estimate(&info, settings),
        "origin": entry.origin.as_str(),
    });
    if let Some(system) = &defaults.system {
        out["system"] = json!(system);
    }
    Ok(out)
}

/// Parameters as Ollama's `/api/show` prints them: one `name value` per line.
fn parameter_lines(params: &Map<String, Value>) -> String {
    let mut lines = Vec::new();
    for (k, v) in params {
        match v {
            Value::Array(items) => lines.extend(items.iter().map(|i| format!("{k} {}", i))),
            other => lines.push(format!("{k} {other}")),
        }
    }
    lines.join("\n")
}

/// `/api/ps`: loaded models with their context and unload time.
pub fn ps(manager: &ModelManager) -> Value {
    let models: Vec<Value> = manager
        .loaded()
        .into_iter()
        .map(|m| {
            let details = manager.store().header(&m.entry.path).map(|i| details(&i)).unwrap_or(Value::Null);
            let digest = digest_hex(manager.store(), &m.entry).unwrap_or_default();
            json!({
                "name": m.entry.name,
                "model": m.entry.name,
                "size": m.size,
                "digest": digest,
                "details": details,
                "expires_at": timestamp(m.expires_at),
                "size_vram": 0,
                "context_length": m.context_length,
            })
        })
        .collect();
    // hearth's own fields next to Ollama's: the RAM budget and the estimated use against it.
    json!({ "models": models, "ram_budget": manager.limits().ram_budget, "ram_used": manager.used() })
}

/// The RAM estimate for loading `info` with `settings`, as `/api/show` reports it: `total` is
/// what a load counts and its parts add up to it; `embedding` is counted on top of it on the
/// model's first embed request.
pub fn ram_estimate(info: &GgufInfo, settings: &crate::engine::LoadSettings) -> Value {
    let e = crate::engine::estimate::estimate(info, settings);
    json!({
        "total": e.total(),
        "weights": e.weights,
        "convert_weights": settings.weights.as_str(),
        "kv_cache": e.kv_cache,
        "overhead": e.overhead,
        "embedding": e.embedding,
        "prefix_store": e.prefix_store,
        "num_ctx": crate::engine::estimate::effective_ctx(info, settings.num_ctx),
        "parallel": settings.parallel,
    })
}
