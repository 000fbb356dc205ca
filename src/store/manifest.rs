//! A hearth model manifest: the JSON file that turns content-addressed blobs into a named
//! model. It names the weights and adapters by digest and carries the overrides a Modelfile
//! sets. Reading refuses anything malformed (unknown fields, bad digests), so a manifest can
//! never point outside the blobs directory.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{atomic_write, digest_hex, StoreError};

pub const SCHEMA: u32 = 1;
/// Larger manifests are refused unread (templates and licenses are the big parts).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    /// Digest of the GGUF weights blob.
    pub model: String,
    pub size: u64,
    /// Where it came from: a URL, `hf://...`, a catalog name, a file, or `copy of NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// Digests of LoRA adapter blobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<String>,
    pub created_at: String,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Manifest {
    /// A manifest for weights alone.
    pub fn for_weights(digest: String, size: u64, source: Option<String>) -> Manifest {
        Manifest {
            schema: SCHEMA,
            model: digest,
            size,
            source,
            license: None,
            template: None,
            system: None,
            parameters: serde_json::Map::new(),
            adapters: Vec::new(),
            created_at: now(),
        }
    }

    /// Every blob this manifest refers to.
    pub fn blobs(&self) -> Vec<String> {
        std::iter::once(self.model.clone()).chain(self.adapters.iter().cloned()).collect()
    }

    /// Reads and checks the manifest at `path`; `None` if there is none.
    pub fn read(path: &Path) -> Result<Option<Manifest>, StoreError> {
        let bad = |reason: String| StoreError::Invalid(format!("manifest {}: {reason}", path.display()));
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        if !meta.is_file() {
            return Ok(None);
        }
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(bad("too large".into()));
        }
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if m.schema != SCHEMA {
            return Err(bad(format!("unsupported schema {}", m.schema)));
        }
        for d in m.blobs() {
            digest_hex(&d)?;
        }
        Ok(Some(m))
    }

    pub fn write(&self, path: &Path) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| StoreError::Invalid(e.to_string()))?;
        atomic_write(path, &bytes).map_err(|source| StoreError::Io {
            dir: path.display().to_string(),
            source,
        })
    }
}
