//! Where models come from: hearth's store, drop-in files, and Ollama's store, behind one name.
//!
//! The models directory holds content-addressed blobs (`blobs/sha256-<hex>`) and one manifest
//! per model (`manifests/<name>/<tag>`, JSON: the weights' digest, source, license, and the
//! template/system/parameter/adapter overrides), so two names can share one file. Beside them,
//! every `NAME.gguf` dropped into the directory is the model `NAME` (`foo.gguf` is
//! `foo:latest`), and the models of an Ollama store (`OLLAMA_MODELS` or `~/.ollama/models`) are
//! listed read-only and run from their blobs in place. A name resolves in that order.
//!
//! Every name and digest from outside is validated here before it becomes a path, so no
//! request can reach a file outside these directories. A model appears only once its blob is
//! complete, verified and validated, and its manifest is written by an atomic rename: a killed
//! process leaves at most a stray partial file, never a broken model. The store never loads a
//! model.

pub mod gguf;
mod headers;
pub mod manifest;
pub mod modelfile;
pub mod ollama;
pub mod pull;
pub mod reach;
mod resolved;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::spec::options::{OptionError, OptionPatch};

pub use manifest::Manifest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("model '{0}' not found")]
    NotFound(String),
    #[error("invalid model name '{name}': {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid digest '{0}': expected sha256: followed by 64 hex digits")]
    InvalidDigest(String),
    #[error("blob {0} not found; upload it first with POST /api/blobs/{0}")]
    BlobNotFound(String),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("model '{0}' belongs to the Ollama store, which hearth only reads")]
    ReadOnly(String),
    #[error("invalid GGUF file {what}: {source}")]
    Gguf { what: String, source: gguf::GgufError },
    #[error("invalid Modelfile: {0}")]
    Modelfile(String),
    #[error("{0}")]
    Invalid(String),
    #[error("not enough disk space: {needed} bytes needed, {available} available in {dir}")]
    NoSpace { needed: u64, available: u64, dir: String },
    #[error("download failed: {0}")]
    Download(String),
    #[error("the file is {size} bytes, more than the limit of {limit} bytes for a pull (pull.max_bytes)")]
    TooLarge { size: u64, limit: u64 },
    #[error("{dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

/// Where a model's entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A manifest in hearth's store.
    Hearth,
    /// A `NAME.gguf` file in the models directory.
    DropIn,
    /// Ollama's store, read-only.
    Ollama,
    /// A path given on the command line.
    File,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Hearth => "hearth",
            Origin::DropIn => "file",
            Origin::Ollama => "ollama",
            Origin::File => "path",
        }
    }
}

/// What a model's manifest adds to its weights: applied to every request for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDefaults {
    /// Prompt template (Jinja chat template, or Ollama's Go template subset).
    pub template: Option<String>,
    pub system: Option<String>,
    /// Default `options` as the manifest writes them (`/api/show` lists them).
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// The same, parsed when the manifest was read: under the persona's and the request's.
    /// An error when the manifest carries options hearth cannot use (Ollama's store may); a
    /// request for the model reports it.
    pub options: Result<OptionPatch, OptionError>,
    /// LoRA adapters applied at load, in order.
    pub adapters: Vec<PathBuf>,
    pub license: Option<String>,
}

impl Default for ModelDefaults {
    fn default() -> Self {
        Self {
            template: None,
            system: None,
            parameters: serde_json::Map::new(),
            options: Ok(OptionPatch::default()),
            adapters: Vec::new(),
            license: None,
        }
    }
}

impl ModelDefaults {
    /// Sets the default options, parsing them once.
    pub fn set_parameters(&mut self, parameters: serde_json::Map<String, serde_json::Value>) {
        self.options = OptionPatch::from_map(&parameters);
        self.parameters = parameters;
    }
}

/// A model the store knows about.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// `name:tag`.
    pub name: String,
    /// The GGUF weights.
    pub path: PathBuf,
    pub size: u64,
    pub modified: SystemTime,
    pub origin: Origin,
    /// `sha256:<hex>` when the store already knows it.
    pub digest: Option<String>,
    pub source: Option<String>,
    pub defaults: ModelDefaults,
}

impl ModelEntry {
    /// Whether `other` would load the same instance: same file and same adapters.
    pub fn same_load(&self, other: &ModelEntry) -> bool {
        self.path == other.path
            && self.modified == other.modified
            && self.size == other.size
            && self.defaults.adapters == other.defaults.adapters
    }
}

/// The models directory.
#[derive(Debug)]
pub struct ModelStore {
    dir: PathBuf,
    /// Ollama's models directory, if there is one.
    ollama_dir: Option<PathBuf>,
    digests: Mutex<HashMap<(PathBuf, u64, SystemTime), String>>,
    headers: headers::HeaderCache,
    resolved: resolved::ResolvedCache,
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
        return Err(invalid("it is longer than 200 characters"));
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
    let (base, tag) = name.split_once(':').unwrap_or((name, "latest"));
    if base.is_empty() || tag.is_empty() || tag.contains(':') {
        return Err(invalid("expected name or name:tag"));
    }
    if !base.starts_with(|c: char| c.is_ascii_alphanumeric()) || !tag.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("name and tag must start with a letter or digit"));
    }
    Ok(format!("{base}:{tag}"))
}

/// Validates a blob digest (`sha256:` + 64 lowercase or uppercase hex) and returns its hex.
pub fn digest_hex(digest: &str) -> Result<String, StoreError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(hex.to_ascii_lowercase()),
        _ => Err(StoreError::InvalidDigest(digest.chars().take(80).collect())),
    }
}

impl ModelStore {
    pub fn new(dir: PathBuf) -> Self {
        ModelStore::with_ollama(dir, ollama::default_dir())
    }

    /// A store that also reads the Ollama models directory `ollama_dir`.
    pub fn with_ollama(dir: PathBuf, ollama_dir: Option<PathBuf>) -> Self {
        ModelStore {
            dir,
            ollama_dir,
            digests: Mutex::new(HashMap::new()),
            headers: Default::default(),
            resolved: Default::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self) -> impl Fn(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            dir: self.dir.display().to_string(),
            source,
        }
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs")
    }

    /// Where partial downloads and uploads live until they are complete.
    pub fn partial_dir(&self) -> PathBuf {
        self.dir.join("partial")
    }

    /// The path of the blob with this (validated) digest.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.blobs_dir().join(format!("sha256-{}", digest_hex(digest)?)))
    }

    pub fn has_blob(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self.blob_path(digest)?.is_file())
    }

    fn manifest_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        let name = normalize_name(name)?;
        let (base, tag) = name.split_once(':').unwrap_or((&name, "latest"));
        Ok(self.dir.join("manifests").join(base).join(tag))
    }

    /// Every model: hearth's, then drop-in files, then Ollama's, sorted by name; a name found
    /// in more than one place is listed once, as it resolves.
    pub fn list(&self) -> Result<Vec<ModelEntry>, StoreError> {
        let mut out: Vec<ModelEntry> = Vec::new();
        let mut seen = HashSet::new();
        let mut push = |e: ModelEntry, out: &mut Vec<ModelEntry>| {
            if seen.insert(e.name.clone()) {
                out.push(e);
            }
        };
        for name in self.manifest_names()? {
            match self.manifest_entry(&name) {
                Ok(Some(e)) => push(e, &mut out),
                Ok(None) => {}
                Err(e) => tracing::warn!("skipping model {name}: {e}"),
            }
        }
        for e in self.drop_ins()? {
            push(e, &mut out);
        }
        if let Some(dir) = &self.ollama_dir {
            for e in ollama::list(dir) {
                push(e, &mut out);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn manifest_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let root = self.dir.join("manifests");
        let bases = match std::fs::read_dir(&root) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(self.io()(e)),
        };
        for base in bases.flatten() {
            let Ok(tags) = std::fs::read_dir(base.path()) else { continue };
            for tag in tags.flatten() {
                let (Some(b), Some(t)) = (base.file_name().to_str().map(String::from), tag.file_name().to_str().map(String::from)) else {
                    continue;
                };
                if let Ok(name) = normalize_name(&format!("{b}:{t}")) {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn drop_ins(&self) -> Result<Vec<ModelEntry>, StoreError> {
        let read = match std::fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io()(e)),
        };
        let mut out = Vec::new();
        for item in read {
            let path = item.map_err(self.io())?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
            let Ok(name) = normalize_name(stem) else { continue };
            if let Ok(entry) = file_entry(name, &path, Origin::DropIn) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// The entry of hearth's manifest for `name`, if there is one.
    fn manifest_entry(&self, name: &str) -> Result<Option<ModelEntry>, StoreError> {
        let path = self.manifest_path(name)?;
        let Some(m) = Manifest::read(&path)? else { return Ok(None) };
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).map_err(self.io())?;
        let weights = self.blob_path(&m.model)?;
        let adapters = m
            .adapters
            .iter()
            .map(|d| self.blob_path(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(ModelEntry {
            name: normalize_name(name)?,
            path: weights,
            size: m.size,
            modified,
            origin: Origin::Hearth,
            digest: Some(m.model.clone()),
            source: m.source.clone(),
            defaults: {
                let mut d = ModelDefaults { template: m.template.clone(), system: m.system.clone(), adapters, license: m.license.clone(), ..ModelDefaults::default() };
                d.set_parameters(m.parameters.clone());
                d
            },
        }))
    }

    /// For the command line: a name, or a path to a `.gguf` file (named after its file stem).
    pub fn resolve_name_or_path(&self, arg: &str) -> Result<ModelEntry, StoreError> {
        let path = Path::new(arg);
        if arg.ends_with(".gguf") || arg.contains('/') {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
            let name = normalize_name(stem).unwrap_or_else(|_| "model:latest".to_string());
            return file_entry(name, path, Origin::File).map_err(|_| StoreError::NotFound(arg.to_string()));
        }
        self.resolve(arg)
    }

    /// `sha256:<hex>` of the model file, computed once per (path, size, mtime).
    pub fn digest(&self, entry: &ModelEntry) -> std::io::Result<String> {
        if let Some(d) = &entry.digest {
            return Ok(d.clone());
        }
        let key = (entry.path.clone(), entry.size, entry.modified);
        if let Some(d) = self.lock_digests().get(&key) {
            return Ok(d.clone());
        }
        let digest = hash_file(&entry.path)?;
        self.lock_digests().insert(key, digest.clone());
        Ok(digest)
    }

    fn lock_digests(&self) -> std::sync::MutexGuard<'_, HashMap<(PathBuf, u64, SystemTime), String>> {
        // A poisoned cache only means a hash was interrupted; the map itself is still valid.
        self.digests.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves a complete, hashed file into the blobs as `digest`. The file must be on the same
    /// filesystem (partial files are); an existing blob with that digest is kept.
    pub fn commit_blob(&self, file: &Path, digest: &str) -> Result<PathBuf, StoreError> {
        let dest = self.blob_path(digest)?;
        std::fs::create_dir_all(self.blobs_dir()).map_err(self.io())?;
        if dest.is_file() {
            let _ = std::fs::remove_file(file);
        } else {
            std::fs::rename(file, &dest).map_err(self.io())?;
        }
        Ok(dest)
    }

    /// Puts an existing file (a local GGUF, a drop-in, Ollama's blob) into the blobs without
    /// copying when it can: a hard link, else a copy through a partial file.
    pub fn import_file(&self, file: &Path) -> Result<(String, u64), StoreError> {
        let digest = hash_file(file).map_err(self.io())?;
        let dest = self.blob_path(&digest)?;
        let size = std::fs::metadata(file).map_err(self.io())?.len();
        if dest.is_file() {
            return Ok((digest, size));
        }
        std::fs::create_dir_all(self.blobs_dir()).map_err(self.io())?;
        std::fs::create_dir_all(self.partial_dir()).map_err(self.io())?;
        let tmp = self.partial_dir().join(format!("import-{}-{}", std::process::id(), &digest[7..19]));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(file, &tmp).is_err() {
            if let Some(available) = self.free_space().filter(|free| *free < size) {
                return Err(StoreError::NoSpace { needed: size, available, dir: self.dir.display().to_string() });
            }
            std::fs::copy(file, &tmp).map_err(self.io())?;
        }
        self.commit_blob(&tmp, &digest)?;
        Ok((digest, size))
    }

    /// Writes the manifest of `name`, replacing any earlier one atomically.
    pub fn write_manifest(&self, name: &str, manifest: &Manifest) -> Result<(), StoreError> {
        let path = self.manifest_path(name)?;
        manifest.write(&path)
    }

    /// Removes a model. For hearth's models, blobs no other manifest uses are deleted too.
    pub fn remove(&self, name: &str) -> Result<ModelEntry, StoreError> {
        let entry = self.resolve(name)?;
        match entry.origin {
            Origin::Ollama => return Err(StoreError::ReadOnly(entry.name)),
            Origin::DropIn | Origin::File => std::fs::remove_file(&entry.path).map_err(self.io())?,
            Origin::Hearth => {
                let path = self.manifest_path(&entry.name)?;
                let old = Manifest::read(&path)?;
                std::fs::remove_file(&path).map_err(self.io())?;
                if let Some(parent) = path.parent() {
                    // Only succeeds when no other tag is left.
                    let _ = std::fs::remove_dir(parent);
                }
                if let Some(old) = old {
                    self.prune(old.blobs())?;
                }
            }
        }
        Ok(entry)
    }

    /// Deletes those of `digests` that no manifest refers to any more.
    fn prune(&self, digests: Vec<String>) -> Result<(), StoreError> {
        let mut used = HashSet::new();
        for name in self.manifest_names()? {
            if let Ok(Some(m)) = Manifest::read(&self.manifest_path(&name)?) {
                used.extend(m.blobs());
            }
        }
        for d in digests {
            if !used.contains(&d) {
                let _ = std::fs::remove_file(self.blob_path(&d)?);
            }
        }
        Ok(())
    }

    /// Copies `source` to the name `dest` (replacing it). Blobs are shared, not copied; a
    /// drop-in or Ollama model is first linked into the blobs.
    pub fn copy(&self, source: &str, dest: &str) -> Result<String, StoreError> {
        let entry = self.resolve(source)?;
        let dest = normalize_name(dest)?;
        let manifest = self.manifest_for(&entry, Some(format!("copy of {}", entry.name)))?;
        self.write_manifest(&dest, &manifest)?;
        Ok(dest)
    }

    /// A manifest that describes `entry` as it resolves now, its blobs in hearth's store.
    pub fn manifest_for(&self, entry: &ModelEntry, source: Option<String>) -> Result<Manifest, StoreError> {
        if entry.origin == Origin::Hearth {
            if let Some(mut m) = Manifest::read(&self.manifest_path(&entry.name)?)? {
                m.source = source.or(m.source);
                m.created_at = manifest::now();
                return Ok(m);
            }
        }
        let (digest, size) = self.import_file(&entry.path)?;
        let adapters = entry
            .defaults
            .adapters
            .iter()
            .map(|a| self.import_file(a).map(|(d, _)| d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Manifest {
            schema: manifest::SCHEMA,
            model: digest,
            size,
            source: source.or_else(|| entry.source.clone()),
            license: entry.defaults.license.clone(),
            template: entry.defaults.template.clone(),
            system: entry.defaults.system.clone(),
            parameters: entry.defaults.parameters.clone(),
            adapters,
            created_at: manifest::now(),
        })
    }

    /// Free bytes on the store's filesystem.
    pub fn free_space(&self) -> Option<u64> {
        let dir = std::iter::successors(Some(self.dir.as_path()), |p| p.parent()).find(|p| p.exists())?;
        free_space(dir)
    }
}

/// Free bytes on the filesystem holding `dir`, for an unprivileged user.
pub fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail.saturating_mul(st.f_frsize))
}

/// `sha256:<hex>` of a whole file.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers see the old
/// content or the new, never a part.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn file_entry(name: String, path: &Path, origin: Origin) -> std::io::Result<ModelEntry> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a file"));
    }
    Ok(ModelEntry {
        name,
        path: path.to_path_buf(),
        size: meta.len(),
        modified: meta.modified()?,
        origin,
        digest: None,
        source: None,
        defaults: ModelDefaults::default(),
    })
}

/// The default models directory, under the per-user data directory (`--models` and
/// `HEARTH_MODELS` choose another).
pub fn default_models_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("hearth")
        .join("models")
}

#[cfg(test)]
mod tests;
