//! Resolving a model's name (`resolve`), and answering it again cheaply while nothing it was
//! resolved from changed. Resolving reads a manifest (or looks for a drop-in file) on a
//! blocking thread; a request for a model named before only needs to know that nothing it was
//! resolved from changed. The store keeps, per name, the entry and the size and modification
//! time of every path `resolve` looked at (present or absent), and `resolve_known` answers from
//! it after reading those paths' metadata again: a handful of `statx` calls on the request's
//! own thread, no file opened and no hand-off to the blocking pool (which cost a cache hit a
//! third of its time at 2,000 requests/s).
//!
//! Must not: answer for a name whose manifest, weights or drop-in file changed, appeared or
//! disappeared since it was resolved; names found in Ollama's store are not kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use super::{file_entry, normalize_name, ollama, ModelEntry, ModelStore, Origin, StoreError};

/// Most names kept; past it the cache starts over (a store has few models).
const MAX_NAMES: usize = 256;

/// A file's size and modification time, or `None` when nothing is there.
type Stamp = Option<(u64, SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// What a name resolved to, and the paths it was resolved from as they were.
#[derive(Debug, Clone)]
struct Resolved {
    entry: ModelEntry,
    seen: Vec<(PathBuf, Stamp)>,
}

/// Resolved entries by normalized name.
#[derive(Debug, Default)]
pub(super) struct ResolvedCache(Mutex<HashMap<String, Resolved>>);

impl ModelStore {
    /// Finds a model by name: hearth's manifest, else `NAME.gguf`, else Ollama's store.
    pub fn resolve(&self, name: &str) -> Result<ModelEntry, StoreError> {
        let wanted = normalize_name(name)?;
        // What each path looked at was before it was read (`resolve_known` compares them).
        let manifest = self.manifest_path(&wanted)?;
        let mut seen = vec![(manifest.clone(), stamp(&manifest))];
        if let Some(e) = self.manifest_entry(&wanted)? {
            seen.push((e.path.clone(), stamp(&e.path)));
            self.remember_resolved(wanted, &e, seen);
            return Ok(e);
        }
        let mut files = vec![self.dir.join(format!("{wanted}.gguf"))];
        if let Some(base) = wanted.strip_suffix(":latest") {
            files.push(self.dir.join(format!("{base}.gguf")));
        }
        for f in files {
            let before = stamp(&f);
            if let Ok(e) = file_entry(wanted.clone(), &f, Origin::DropIn) {
                seen.push((f, before));
                self.remember_resolved(wanted, &e, seen);
                return Ok(e);
            }
            seen.push((f, before));
        }
        if let Some(e) = self.ollama_dir.as_deref().and_then(|d| ollama::resolve(d, &wanted)) {
            return Ok(e);
        }
        Err(StoreError::NotFound(name.to_string()))
    }

    /// What `resolve(name)` returned last time, if none of the paths it looked at has changed
    /// since; `None` when the name must be resolved afresh. Reads those paths' metadata.
    pub fn resolve_known(&self, name: &str) -> Option<ModelEntry> {
        let wanted = normalize_name(name).ok()?;
        let known = self.resolved.0.lock().unwrap_or_else(PoisonError::into_inner).get(&wanted).cloned()?;
        if known.seen.iter().all(|(path, was)| stamp(path) == *was) {
            return Some(known.entry);
        }
        self.resolved.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&wanted);
        None
    }

    /// Keeps `entry` as what `wanted` resolved to, given the paths looked at and their stamps
    /// taken before they were read.
    fn remember_resolved(&self, wanted: String, entry: &ModelEntry, seen: Vec<(PathBuf, Stamp)>) {
        let mut cache = self.resolved.0.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_NAMES {
            cache.clear();
        }
        cache.insert(wanted, Resolved { entry: entry.clone(), seen });
    }
}
