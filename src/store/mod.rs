//! Where models come from: a models directory in which every `NAME.gguf` is a model.
//!
//! A file `smollm2:135m.gguf` is the model `smollm2:135m`; `foo.gguf` is `foo:latest`. The
//! store only maps names to files and describes them; it never loads a model. Names from the
//! network are validated here, so no request can reach a path outside the directory.

pub mod gguf;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("model '{0}' not found")]
    NotFound(String),
    #[error("invalid model name '{name}': {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot read models directory {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

/// A model the store knows about.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// `name:tag`.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub modified: SystemTime,
}

/// The models directory.
#[derive(Debug)]
pub struct ModelStore {
    dir: PathBuf,
    digests: Mutex<HashMap<(PathBuf, u64, SystemTime), String>>,
}

const MAX_NAME_LEN: usize = 200;

/// Validates a model name and adds the default tag: `foo` -> `foo:latest`.
pub fn normalize_name(name: &str) -> Result<String, StoreError> {
    let invalid = |reason| StoreError::InvalidName {
        name: name.chars().take(MAX_NAME_LEN).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("it is too long"));
    }
    if name.contains('/') || name.contains('\\') || name.contains("..") {
        return Err(invalid("it may not contain path separators or '..'"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
    {
        return Err(invalid("use letters, digits, '.', '_', '-' and one ':' before the tag"));
    }
    match name.split_once(':') {
        None => Ok(format!("{name}:latest")),
        Some((base, tag)) if !base.is_empty() && !tag.is_empty() && !tag.contains(':') => Ok(name.to_string()),
        Some(_) => Err(invalid("expected name or name:tag")),
    }
}

impl ModelStore {
    pub fn new(dir: PathBuf) -> Self {
        ModelStore {
            dir,
            digests: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every model in the directory, sorted by name. A missing directory is an empty store.
    pub fn list(&self) -> Result<Vec<ModelEntry>, StoreError> {
        let io = |source| StoreError::Io {
            dir: self.dir.display().to_string(),
            source,
        };
        let read = match std::fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut out = Vec::new();
        for item in read {
            let item = item.map_err(io)?;
            let path = item.path();
            if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
            let Ok(name) = normalize_name(stem) else { continue };
            if let Ok(entry) = entry_for(name, &path) {
                out.push(entry);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Finds a model by name.
    pub fn resolve(&self, name: &str) -> Result<ModelEntry, StoreError> {
        let wanted = normalize_name(name)?;
        self.list()?
            .into_iter()
            .find(|e| e.name == wanted)
            .ok_or(StoreError::NotFound(name.to_string()))
    }

    /// For the command line: a name, or a path to a `.gguf` file (named after its file stem).
    pub fn resolve_name_or_path(&self, arg: &str) -> Result<ModelEntry, StoreError> {
        let path = Path::new(arg);
        if arg.ends_with(".gguf") || arg.contains('/') {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
            let name = normalize_name(stem).unwrap_or_else(|_| "model:latest".to_string());
            return entry_for(name, path).map_err(|_| StoreError::NotFound(arg.to_string()));
        }
        self.resolve(arg)
    }

    /// `sha256:<hex>` of the model file, computed once per (path, size, mtime).
    pub fn digest(&self, entry: &ModelEntry) -> std::io::Result<String> {
        let key = (entry.path.clone(), entry.size, entry.modified);
        if let Some(d) = self.lock_digests().get(&key) {
            return Ok(d.clone());
        }
        let mut file = std::fs::File::open(&entry.path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let digest = format!("sha256:{:x}", hasher.finalize());
        self.lock_digests().insert(key, digest.clone());
        Ok(digest)
    }

    fn lock_digests(&self) -> std::sync::MutexGuard<'_, HashMap<(PathBuf, u64, SystemTime), String>> {
        // A poisoned cache only means a hash was interrupted; the map itself is still valid.
        self.digests.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn entry_for(name: String, path: &Path) -> std::io::Result<ModelEntry> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a file"));
    }
    Ok(ModelEntry {
        name,
        path: path.to_path_buf(),
        size: meta.len(),
        modified: meta.modified()?,
    })
}

/// The default models directory: `$HEARTH_MODELS`, else the per-user data directory.
pub fn default_models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HEARTH_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("hearth")
        .join("models")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_a_default_tag() {
        assert_eq!(normalize_name("foo").expect("ok"), "foo:latest");
        assert_eq!(normalize_name("smollm2:135m").expect("ok"), "smollm2:135m");
    }

    #[test]
    fn names_with_paths_are_refused() {
        for bad in ["../etc/passwd", "a/b", "a:b:c", "", ":x", "x:", "a b", "..", "a\\b"] {
            assert!(normalize_name(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn lists_and_resolves_gguf_files() {
        let dir = std::env::temp_dir().join(format!("hearth-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("m:1b.gguf"), b"x").expect("write");
        std::fs::write(dir.join("plain.gguf"), b"y").expect("write");
        std::fs::write(dir.join("notes.txt"), b"z").expect("write");
        let store = ModelStore::new(dir.clone());
        let names: Vec<_> = store.list().expect("list").into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["m:1b", "plain:latest"]);
        assert!(store.resolve("plain").is_ok());
        assert!(matches!(store.resolve("nope"), Err(StoreError::NotFound(_))));
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
