//! Ollama's model store, read-only: its models are listed and run from their blobs in place.
//!
//! Layout: `manifests/registry.ollama.ai/library/<model>/<tag>` (OCI-style JSON whose layers
//! name blobs by digest) over `blobs/sha256-<hex>`. Only the default registry's `library`
//! models are shown, as `model:tag`. Digests are validated before they become paths (the
//! Probllama bug, CVE-2024-37032, was a digest holding `../`). A template that hearth's Go
//! subset can't run is left out, and the GGUF's own chat template is used instead.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{digest_hex, normalize_name, ModelDefaults, ModelEntry, Origin};

const REGISTRY: &str = "registry.ollama.ai";
const NAMESPACE: &str = "library";
/// Text layers (template, system, params, license) larger than this are ignored.
const MAX_TEXT_LAYER: u64 = 1 << 20;

#[derive(Deserialize)]
struct OllamaManifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Layer {
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
}

/// `OLLAMA_MODELS`, else `~/.ollama/models`, if that directory exists.
pub fn default_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("OLLAMA_MODELS")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".ollama").join("models")))?;
    dir.join("manifests").is_dir().then_some(dir)
}

fn library_dir(dir: &Path) -> PathBuf {
    dir.join("manifests").join(REGISTRY).join(NAMESPACE)
}

/// Every runnable model of the Ollama store at `dir`.
pub fn list(dir: &Path) -> Vec<ModelEntry> {
    let mut out = Vec::new();
    let Ok(models) = std::fs::read_dir(library_dir(dir)) else { return out };
    for model in models.flatten() {
        let Ok(tags) = std::fs::read_dir(model.path()) else { continue };
        for tag in tags.flatten() {
            let name = format!("{}:{}", model.file_name().to_string_lossy(), tag.file_name().to_string_lossy());
            if let Some(e) = normalize_name(&name).ok().and_then(|n| resolve(dir, &n)) {
                out.push(e);
            }
        }
    }
    out
}

/// The model `name` (`model:tag`, already normalized) of the Ollama store at `dir`.
pub fn resolve(dir: &Path, name: &str) -> Option<ModelEntry> {
    let (model, tag) = name.split_once(':')?;
    let manifest_path = library_dir(dir).join(model).join(tag);
    let meta = std::fs::metadata(&manifest_path).ok().filter(|m| m.is_file() && m.len() < MAX_TEXT_LAYER)?;
    let manifest: OllamaManifest = serde_json::from_slice(&std::fs::read(&manifest_path).ok()?).ok()?;
    let blob = |digest: &str| -> Option<PathBuf> {
        let hex = digest_hex(digest).ok()?;
        Some(dir.join("blobs").join(format!("sha256-{hex}")))
    };
    let text = |layer: &Layer| -> Option<String> {
        if layer.size > MAX_TEXT_LAYER {
            return None;
        }
        std::fs::read_to_string(blob(&layer.digest)?).ok()
    };
    let mut weights = None;
    let mut defaults = ModelDefaults::default();
    for layer in &manifest.layers {
        match layer.media_type.as_str() {
            "application/vnd.ollama.image.model" => weights = Some(layer),
            "application/vnd.ollama.image.template" => {
                defaults.template = text(layer).filter(|t| crate::spec::template::go_template_supported(t));
            }
            "application/vnd.ollama.image.system" => defaults.system = text(layer),
            "application/vnd.ollama.image.license" => defaults.license = text(layer),
            "application/vnd.ollama.image.params" => {
                if let Some(serde_json::Value::Object(map)) = text(layer).and_then(|t| serde_json::from_str(&t).ok()) {
                    defaults.set_parameters(map);
                }
            }
            "application/vnd.ollama.image.adapter" => defaults.adapters.extend(blob(&layer.digest)),
            _ => {}
        }
    }
    let weights = weights?;
    let path = blob(&weights.digest)?;
    let size = std::fs::metadata(&path).ok().filter(|m| m.is_file())?.len();
    Some(ModelEntry {
        name: name.to_string(),
        path,
        size,
        modified: meta.modified().ok()?,
        origin: Origin::Ollama,
        digest: Some(format!("sha256:{}", digest_hex(&weights.digest).ok()?)),
        source: Some(format!("ollama:{model}:{tag}")),
        defaults,
    })
}
