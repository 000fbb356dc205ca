//! Prefixes kept on disk between loads of a model, so a conversation stays warm after its
//! model was evicted or the server restarted. When a worker ends, what its slots and its
//! prefix store hold goes to `<data>/prefixes/<key>/`, one entry per sequence: `<stem>.seq`
//! (llama.cpp's own sequence-state file: its header, the tokens, the KV cells) and
//! `<stem>.tokens` (hearth's index: the same tokens, and the `.seq` file's length and SHA-256,
//! read when the model loads, so that nothing but a few token lists is read until a prompt can
//! use an entry). llama.cpp aborts the process on a truncated state file (`GGML_ASSERT(nread <=
//! state_size)`), so a `.seq` file reaches it only after its length and digest match the index.
//!
//! The key is a digest of what makes a KV cache valid for a model: the weights (their digest,
//! or their path, size and time), the adapters, the weight conversion, and the llama.cpp build;
//! an entry is only ever restored into the instance it was keyed for, and llama.cpp checks the
//! shapes again as it reads. Files are written under a temporary name and renamed, so a crash
//! mid-write leaves no entry. All models' entries together stay under one bound, the least
//! recently used going first. Disk errors are logged and cost only the warm start.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::token::LlamaToken;
use sha2::{Digest, Sha256};

use super::prefix::common_prefix;

/// The disk all models' saved prefixes may take unless configured: 1 GiB.
pub const DEFAULT_DISK_PREFIX_BYTES: u64 = 1 << 30;

const MAGIC: &[u8; 8] = b"HRTHTOK2";

/// What the index records of an entry's `.seq` file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeqFile {
    len: u64,
    sha256: [u8; 32],
}

impl SeqFile {
    fn of(bytes: &[u8]) -> SeqFile {
        SeqFile { len: bytes.len() as u64, sha256: Sha256::digest(bytes).into() }
    }
}

/// Where and how much: the `prefixes` folder of the data directory and its bound in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPrefixConfig {
    pub root: PathBuf,
    pub limit: u64,
}

/// The folder name for a model's entries: a digest of everything its KV values depend on
/// (`computed`: the weights' conversion, and how exact reuse computed them).
pub fn key(weights: &str, adapters: &[String], computed: &str) -> String {
    let mut h = Sha256::new();
    for part in [weights, computed, env!("HEARTH_LLAMA_CPP")].into_iter().chain(adapters.iter().map(String::as_str)) {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize()[..12])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The entry name for `tokens`.
fn stem(tokens: &[LlamaToken]) -> String {
    let mut h = Sha256::new();
    for t in tokens {
        h.update(t.0.to_le_bytes());
    }
    hex(&h.finalize()[..8])
}

fn encode_index(seq: &SeqFile, tokens: &[LlamaToken]) -> Vec<u8> {
    let mut out = Vec::with_capacity(52 + 4 * tokens.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.len.to_le_bytes());
    out.extend_from_slice(&seq.sha256);
    out.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
    for t in tokens {
        out.extend_from_slice(&t.0.to_le_bytes());
    }
    out
}

fn decode_index(bytes: &[u8]) -> Option<(SeqFile, Vec<LlamaToken>)> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (len, rest) = rest.split_first_chunk::<8>()?;
    let (sha256, rest) = rest.split_first_chunk::<32>()?;
    let (count, rest) = rest.split_first_chunk::<4>()?;
    let count = u32::from_le_bytes(*count) as usize;
    if rest.len() != 4 * count || count == 0 {
        return None;
    }
    let tokens = rest.chunks_exact(4).map(|c| LlamaToken(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
    Some((SeqFile { len: u64::from_le_bytes(*len), sha256: *sha256 }, tokens))
}

/// One model's entries on disk.
pub struct DiskPrefixes {
    config: DiskPrefixConfig,
    dir: PathBuf,
    /// Each entry's tokens, stem and `.seq` file.
    entries: Vec<(Vec<LlamaToken>, String, SeqFile)>,
}

impl DiskPrefixes {
    /// Reads the index of `key`'s folder. Entries with a bad or missing half are deleted.
    pub fn open(config: DiskPrefixConfig, key: &str) -> DiskPrefixes {
        let dir = config.root.join(key);
        let mut entries = Vec::new();
        if let Ok(list) = fs::read_dir(&dir) {
            for file in list.flatten() {
                let path = file.path();
                if path.extension().is_some_and(|e| e == "tmp") {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "tokens") {
                    continue;
                }
                let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
                let index = fs::read(&path).ok().and_then(|b| decode_index(&b));
                let seq_len = fs::metadata(dir.join(format!("{stem}.seq"))).map(|m| m.len()).ok();
                match index {
                    Some((seq, tokens)) if seq_len == Some(seq.len) => entries.push((tokens, stem, seq)),
                    _ => {
                        tracing::warn!(file = %path.display(), "a saved prefix is unreadable; deleting it");
                        remove_entry(&dir, &stem);
                    }
                }
            }
        }
        if !entries.is_empty() {
            tracing::debug!(entries = entries.len(), dir = %dir.display(), "saved prefixes on disk");
        }
        DiskPrefixes { config, dir, entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry sharing the longest prefix with `prompt`, and that length.
    pub fn best(&self, prompt: &[LlamaToken]) -> Option<(usize, usize)> {
        self.entries.iter().enumerate().map(|(i, (t, _, _))| (i, common_prefix(t, prompt))).max_by_key(|&(_, c)| c)
    }

    /// Reads entry `i` into sequence `seq` (which must be empty) and returns its tokens. An entry
    /// whose file does not match the index, or that llama.cpp refuses, is deleted. The entry
    /// stays on disk (marked used); a longer one saved later replaces it.
    pub fn restore(&mut self, ctx: &mut LlamaContext, seq: usize, i: usize, max_tokens: usize) -> Option<Vec<LlamaToken>> {
        let (tokens, stem, file) = self.entries.get(i)?.clone();
        let path = self.dir.join(format!("{stem}.seq"));
        let intact = fs::read(&path).map(|b| SeqFile::of(&b) == file).unwrap_or(false);
        let outcome = if intact {
            ctx.state_seq_load_file(&path, seq as i32, max_tokens).map_err(|e| e.to_string())
        } else {
            Err("the file does not match its length and SHA-256 in the index".to_string())
        };
        match outcome {
            Ok((read, _)) if read == tokens => {
                touch(&path);
                Some(tokens)
            }
            outcome => {
                let why = outcome.map_or_else(|e| e, |_| "its tokens differ from the index".to_string());
                tracing::warn!(file = %path.display(), "a saved prefix could not be restored ({why}); deleting it");
                super::slot_cache::clear_seq(ctx, seq);
                remove_entry(&self.dir, &stem);
                self.entries.swap_remove(i);
                None
            }
        }
    }

    /// Writes sequence `seq` (holding exactly `tokens`) as an entry, unless one already covers
    /// it; entries it covers are deleted.
    pub fn save(&mut self, ctx: &LlamaContext, seq: usize, tokens: &[LlamaToken]) {
        if tokens.is_empty() || self.config.limit == 0 || self.entries.iter().any(|(t, _, _)| t.starts_with(tokens)) {
            return;
        }
        if let Err(e) = fs::create_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "cannot keep prefixes on disk: {e}");
            return;
        }
        let stem = stem(tokens);
        let seq_path = self.dir.join(format!("{stem}.seq"));
        let seq_tmp = self.dir.join(format!("{stem}.seq.tmp"));
        let written = ctx
            .state_seq_save_file(&seq_tmp, seq as i32, tokens)
            .map_err(|e| e.to_string())
            .and_then(|_| fs::read(&seq_tmp).map(|b| SeqFile::of(&b)).map_err(|e| e.to_string()))
            .and_then(|file| {
                fs::rename(&seq_tmp, &seq_path).map_err(|e| e.to_string())?;
                crate::store::atomic_write(&self.dir.join(format!("{stem}.tokens")), &encode_index(&file, tokens)).map_err(|e| e.to_string())?;
                Ok(file)
            });
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "could not save a prefix to disk: {e}");
                let _ = fs::remove_file(&seq_tmp);
                remove_entry(&self.dir, &stem);
                return;
            }
        };
        let dir = &self.dir;
        self.entries.retain(|(t, s, _)| {
            let covered = tokens.starts_with(t);
            if covered {
                remove_entry(dir, s);
            }
            !covered
        });
        self.entries.push((tokens.to_vec(), stem, file));
    }

    /// Deletes the least recently used entries of every model until all fit the bound.
    pub fn enforce_limit(&self) {
        enforce_limit(&self.config.root, self.config.limit);
    }
}

/// Deletes whole entries under `root` (any model's), least recently used first, until their
/// files take at most `limit` bytes. Returns the bytes left.
pub fn enforce_limit(root: &Path, limit: u64) -> u64 {
    // (last used, bytes of both files, folder, stem)
    let mut entries: Vec<(SystemTime, u64, PathBuf, String)> = Vec::new();
    for dir in fs::read_dir(root).into_iter().flatten().flatten().map(|d| d.path()).filter(|p| p.is_dir()) {
        for file in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = file.path();
            if path.extension().is_none_or(|e| e != "seq") {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
            let Ok(meta) = file.metadata() else { continue };
            let tokens = fs::metadata(dir.join(format!("{stem}.tokens"))).map_or(0, |m| m.len());
            entries.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len() + tokens, dir.clone(), stem));
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut used = 0;
    for (_, bytes, dir, stem) in entries {
        if used + bytes <= limit {
            used += bytes;
        } else {
            remove_entry(&dir, &stem);
        }
    }
    used
}

fn remove_entry(dir: &Path, stem: &str) {
    let _ = fs::remove_file(dir.join(format!("{stem}.tokens")));
    let _ = fs::remove_file(dir.join(format!("{stem}.seq")));
}

fn touch(path: &Path) {
    if let Ok(f) = fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(v: &[i32]) -> Vec<LlamaToken> {
        v.iter().map(|&t| LlamaToken(t)).collect()
    }

    #[test]
    fn token_lists_round_trip_and_damage_is_refused() {
        let t = toks(&[1, -2, 300_000, 7]);
        let file = SeqFile::of(b"state");
        let bytes = encode_index(&file, &t);
        assert_eq!(decode_index(&bytes), Some((file.clone(), t)));
        assert_eq!(decode_index(&bytes[..bytes.len() - 1]), None, "truncated");
        assert_eq!(decode_index(&[b"HRTHTOK1".as_slice(), &bytes[8..]].concat()), None, "another magic");
        assert_eq!(decode_index(&encode_index(&file, &[])), None, "an empty entry");
    }

    #[test]
    fn the_key_changes_with_anything_the_kv_values_depend_on() {
        let base = key("sha256:aa", &[], "none");
        assert_eq!(base, key("sha256:aa", &[], "none"));
        assert_ne!(base, key("sha256:ab", &[], "none"));
        assert_ne!(base, key("sha256:aa", &["lora".into()], "none"));
        assert_ne!(base, key("sha256:aa", &[], "q8_0"));
        assert_eq!(base.len(), 24);
    }

    fn put(dir: &Path, stem: &str, tokens: &[i32], seq_bytes: usize, age_s: u64) {
        fs::create_dir_all(dir).expect("dir");
        let state = vec![0u8; seq_bytes];
        fs::write(dir.join(format!("{stem}.tokens")), encode_index(&SeqFile::of(&state), &toks(tokens))).expect("tokens");
        let seq = dir.join(format!("{stem}.seq"));
        fs::write(&seq, state).expect("seq");
        let f = fs::File::options().append(true).open(&seq).expect("open");
        f.set_modified(SystemTime::now() - std::time::Duration::from_secs(age_s)).expect("mtime");
    }

    #[test]
    fn the_index_reads_whole_entries_and_deletes_broken_ones() {
        let root = std::env::temp_dir().join(format!("hearth-disk-prefixes-{}", std::process::id()));
        let dir = root.join("k1");
        put(&dir, "a", &[1, 2, 3], 10, 0);
        put(&dir, "b", &[1, 2, 9, 9], 10, 0);
        fs::write(dir.join("c.tokens"), b"garbage").expect("c");
        fs::write(dir.join("c.seq"), b"x").expect("c");
        fs::write(dir.join("d.tokens"), encode_index(&SeqFile::of(b"x"), &toks(&[5]))).expect("d: no .seq");
        put(&dir, "f", &[1, 2], 10, 0);
        fs::write(dir.join("f.seq"), b"shorter").expect("f: cut");
        fs::write(dir.join("e.seq.tmp"), b"half written").expect("e");
        let d = DiskPrefixes::open(DiskPrefixConfig { root: root.clone(), limit: 1 << 20 }, "k1");
        assert_eq!(d.len(), 2);
        let (i, common) = d.best(&toks(&[1, 2, 9, 9, 4])).expect("an entry");
        assert_eq!((d.entries[i].1.as_str(), common), ("b", 4));
        for gone in ["c.tokens", "c.seq", "d.tokens", "e.seq.tmp", "f.seq", "f.tokens"] {
            assert!(!dir.join(gone).exists(), "{gone} is deleted");
        }
        assert!(DiskPrefixes::open(DiskPrefixConfig { root: root.clone(), limit: 1 << 20 }, "other").best(&toks(&[1])).is_none());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn the_bound_spans_every_model_and_the_least_recently_used_go_first() {
        let root = std::env::temp_dir().join(format!("hearth-disk-bound-{}", std::process::id()));
        let tokens_len = encode_index(&SeqFile::of(b""), &toks(&[1, 2])).len() as u64;
        put(&root.join("m1"), "old", &[1, 2], 100, 300);
        put(&root.join("m2"), "mid", &[1, 2], 100, 200);
        put(&root.join("m1"), "new", &[1, 2], 100, 100);
        assert_eq!(enforce_limit(&root, 2 * (100 + tokens_len) + 50), 2 * (100 + tokens_len));
        assert!(!root.join("m1/old.seq").exists() && !root.join("m1/old.tokens").exists());
        assert!(root.join("m2/mid.seq").exists() && root.join("m1/new.seq").exists());
        assert_eq!(enforce_limit(&root, 0), 0);
        assert!(!root.join("m1/new.seq").exists());
        let _ = fs::remove_dir_all(&root);
    }
}
