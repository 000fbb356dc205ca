//! GGUF headers read once per version of a file: the store keeps each file's parsed header
//! under its path, size and modification time, and parses it again only when one of them
//! changes. The request paths that need a header (a prompt template's variant for the model's
//! family, `/api/show`, `/api/ps`) read it here; create, pull and load validate the file they
//! are about to trust by reading it whole, not from here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use super::gguf::{read_gguf, GgufError, GgufInfo};
use super::ModelStore;

/// Most headers kept; past it the cache starts over (a store has few models).
const MAX_HEADERS: usize = 256;

/// A parsed header with the size and modification time of the file it was read from.
type Versioned = (u64, SystemTime, Arc<GgufInfo>);

/// Parsed headers by path.
#[derive(Debug, Default)]
pub(super) struct HeaderCache(Mutex<HashMap<PathBuf, Versioned>>);

impl ModelStore {
    /// The validated header of the GGUF file at `path`, parsed once per version of the file.
    /// Reads the file's metadata each time: call it off async threads.
    pub fn header(&self, path: &Path) -> Result<Arc<GgufInfo>, GgufError> {
        let io = |source| GgufError::Io { path: path.display().to_string(), source };
        let meta = std::fs::metadata(path).map_err(io)?;
        let (size, modified) = (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
        let cache = &self.headers.0;
        if let Some((s, m, info)) = cache.lock().unwrap_or_else(PoisonError::into_inner).get(path) {
            if (*s, *m) == (size, modified) {
                return Ok(Arc::clone(info));
            }
        }
        let info = Arc::new(read_gguf(path)?);
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_HEADERS {
            cache.clear();
        }
        cache.insert(path.to_path_buf(), (size, modified, Arc::clone(&info)));
        Ok(info)
    }

    /// How many headers were parsed and kept (for the tests).
    #[cfg(test)]
    pub(super) fn headers_kept(&self) -> usize {
        self.headers.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}
