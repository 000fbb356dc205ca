//! Pulling a model into the store: from an http(s) URL, an `hf://owner/repo/file.gguf` path
//! (Hugging Face's resolve URL), or a name in the built-in catalog.
//!
//! The download goes to a partial file keyed by its URL, so an interrupted pull resumes with an
//! HTTP Range request where it stopped (a server that ignores Range restarts it). The sha256 is
//! computed while downloading (the kept part first, when resuming) and checked against the
//! catalog's when known; then the file is validated as GGUF, moved into the blobs, and only then
//! does a manifest name it. Anything that fails before that leaves the store as it was (a kept
//! partial file is invisible to `list`). Two pulls of one URL at once are refused by a lock on
//! the partial file.

use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::gguf::{read_gguf, GgufInfo};
use super::{normalize_name, Manifest, ModelStore, StoreError};

/// A model the catalog knows by a friendly name.
#[derive(Debug, Clone, Copy)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub url: &'static str,
    /// `sha256:<hex>` of the file, where we have it.
    pub sha256: Option<&'static str>,
    pub license: &'static str,
}

/// Friendly names for common small GGUF models on Hugging Face, with the SHA-256 a pull must
/// match. Hugging Face can't be reached from the machine this was written on: each digest is
/// the value several public sources state for that exact repository and file (and the same
/// size). SmolLM2-135M's official file has no such record yet; its pull records the digest it
/// computed in the manifest.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2:135m",
        url: "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/resolve/main/smollm2-135m-instruct-q8_0.gguf",
        sha256: None,
        license: "Apache-2.0",
    },
    CatalogEntry {
        name: "smollm2:360m",
        url: "https://huggingface.co/HuggingFaceTB/SmolLM2-360M-Instruct-GGUF/resolve/main/smollm2-360m-instruct-q8_0.gguf",
        sha256: Some("sha256:48ab3034d0dd401fbc721eb1df3217902fee7dab9078992d66431f09b7750201"),
        license: "Apache-2.0",
    },
    CatalogEntry {
        name: "qwen2.5:0.5b",
        url: "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q4_k_m.gguf",
        sha256: Some("sha256:74a4da8c9fdbcd15bd1f6d01d621410d31c6fc00986f5eb687824e7b93d7a9db"),
        license: "Apache-2.0",
    },
    CatalogEntry {
        name: "qwen2.5:1.5b",
        url: "https://huggingface.co/Qwen/Qwen2.5-1.5B-Instruct-GGUF/resolve/main/qwen2.5-1.5b-instruct-q4_k_m.gguf",
        sha256: Some("sha256:6a1a2eb6d15622bf3c96857206351ba97e1af16c30d7a74ee38970e434e9407e"),
        license: "Apache-2.0",
    },
    CatalogEntry {
        name: "llama3.2:1b",
        url: "https://huggingface.co/bartowski/Llama-3.2-1B-Instruct-GGUF/resolve/main/Llama-3.2-1B-Instruct-Q4_K_M.gguf",
        sha256: Some("sha256:6f85a640a97cf2bf5b8e764087b1e83da0fdb51d7c9fab7d0fece9385611df83"),
        license: "Llama 3.2 Community License",
    },
    CatalogEntry {
        name: "llama3.2:3b",
        url: "https://huggingface.co/bartowski/Llama-3.2-3B-Instruct-GGUF/resolve/main/Llama-3.2-3B-Instruct-Q4_K_M.gguf",
        sha256: Some("sha256:6c1a2b41161032677be168d354123594c0e6e67d2b9227c84f296ad037c728ff"),
        license: "Llama 3.2 Community License",
    },
    CatalogEntry {
        name: "gemma3:1b",
        url: "https://huggingface.co/ggml-org/gemma-3-1b-it-GGUF/resolve/main/gemma-3-1b-it-Q4_K_M.gguf",
        sha256: Some("sha256:8ccc5cd1f1b3602548715ae25a66ed73fd5dc68a210412eea643eb20eb75a135"),
        license: "Gemma Terms of Use",
    },
    CatalogEntry {
        name: "mistral:7b",
        url: "https://huggingface.co/bartowski/Mistral-7B-Instruct-v0.3-GGUF/resolve/main/Mistral-7B-Instruct-v0.3-Q4_K_M.gguf",
        sha256: Some("sha256:1270d22c0fbb3d092fb725d4d96c457b7b687a5f5a715abe1e818da303e562b6"),
        license: "Apache-2.0",
    },
];

/// What a pull may reach and how much it may download.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PullLimits {
    pub reach: super::reach::Reach,
    pub max_bytes: Option<u64>,
}

impl PullLimits {
    /// The command line's: the local user may pull anything from anywhere.
    pub fn local() -> PullLimits {
        PullLimits { reach: super::reach::Reach::anywhere(), max_bytes: None }
    }
}

/// What to download and under which name.
#[derive(Debug, Clone, PartialEq)]
pub struct PullPlan {
    pub url: String,
    pub name: String,
    pub sha256: Option<String>,
    pub license: Option<String>,
    /// As the user wrote it, for the manifest's `source`.
    pub source: String,
}

/// Turns `hearth pull SOURCE [--as NAME]` into a plan.
pub fn plan(source: &str, as_name: Option<&str>) -> Result<PullPlan, StoreError> {
    let (url, default_name, sha256, license) = if let Some(rest) = source.strip_prefix("hf://") {
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() < 3 || parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") || !rest.ends_with(".gguf") {
            return Err(StoreError::Invalid(format!(
                "invalid Hugging Face source {source:?}: expected hf://owner/repo/path/file.gguf"
            )));
        }
        let url = format!("https://huggingface.co/{}/{}/resolve/main/{}", parts[0], parts[1], parts[2..].join("/"));
        (url, name_from_url(rest), None, None)
    } else if source.starts_with("http://") || source.starts_with("https://") {
        let parsed = reqwest::Url::parse(source).map_err(|e| StoreError::Invalid(format!("invalid URL {source:?}: {e}")))?;
        (source.to_string(), name_from_url(parsed.path()), None, None)
    } else {
        let wanted = normalize_name(source)?;
        let entry = CATALOG.iter().find(|c| c.name == wanted).ok_or_else(|| {
            let names: Vec<&str> = CATALOG.iter().map(|c| c.name).collect();
            StoreError::NotFound(format!(
                "{source} (not in the catalog: {}; or pull an http(s):// URL or hf://owner/repo/file.gguf)",
                names.join(", ")
            ))
        })?;
        (entry.url.to_string(), Some(wanted), entry.sha256.map(String::from), Some(entry.license.to_string()))
    };
    let name = match as_name {
        Some(n) => normalize_name(n)?,
        None => default_name.ok_or_else(|| {
            StoreError::Invalid(format!("cannot name a model after {source:?}; give a name with --as"))
        })?,
    };
    Ok(PullPlan {
        url,
        name,
        sha256,
        license,
        source: source.to_string(),
    })
}

/// A model name from the last path segment of a URL: `Foo-Q4.gguf` -> `foo-q4:latest`.
fn name_from_url(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.strip_suffix(".gguf").unwrap_or(file).to_ascii_lowercase();
    let cleaned: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    normalize_name(cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric())).ok()
}

/// One progress report, as Ollama's `/api/pull` streams them.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub status: String,
    pub digest: Option<String>,
    pub total: Option<u64>,
    pub completed: Option<u64>,
}

impl Progress {
    pub fn status(s: impl Into<String>) -> Progress {
        Progress {
            status: s.into(),
            digest: None,
            total: None,
            completed: None,
        }
    }
}

/// What a finished pull made.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub name: String,
    pub digest: String,
    pub size: u64,
    /// Bytes actually transferred by this pull (less than `size` when it resumed).
    pub downloaded: u64,
    pub info: GgufInfo,
}

/// How often progress is reported while bytes flow.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Downloads, verifies and validates `plan`, then names it in the store. `report` sees the
/// progress; `check` sees the validated GGUF and may return a warning (e.g. over the RAM
/// budget), reported before the model is written.
pub async fn pull(
    store: &ModelStore,
    plan: &PullPlan,
    limits: &PullLimits,
    report: impl FnMut(Progress),
    check: impl FnOnce(&GgufInfo) -> Option<String>,
) -> Result<Pulled, StoreError> {
    let result = download(store, plan, limits, report, check).await;
    if result.is_err() {
        // A failure before any byte arrived leaves no empty partial file behind.
        let path = partial_path(store, plan);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

fn partial_path(store: &ModelStore, plan: &PullPlan) -> std::path::PathBuf {
    let key = format!("{:x}", Sha256::digest(plan.url.as_bytes()));
    store.partial_dir().join(format!("pull-{}.partial", &key[..24]))
}

async fn download(
    store: &ModelStore,
    plan: &PullPlan,
    limits: &PullLimits,
    mut report: impl FnMut(Progress),
    check: impl FnOnce(&GgufInfo) -> Option<String>,
) -> Result<Pulled, StoreError> {
    let io = |source: std::io::Error| StoreError::Io {
        dir: store.partial_dir().display().to_string(),
        source,
    };
    let url = reqwest::Url::parse(&plan.url).map_err(|e| StoreError::Invalid(format!("invalid URL: {e}")))?;
    limits.reach.check_url(&url).map_err(StoreError::Invalid)?;
    report(Progress::status("pulling manifest"));
    let partial_path = partial_path(store, plan);
    // Opening, locking and hashing what an earlier attempt kept (the digest covers the whole
    // file) read the disk: on a blocking thread.
    let (partial_dir, path, url) = (store.partial_dir(), partial_path.clone(), plan.url.clone());
    let dir = partial_dir.display().to_string();
    let (mut file, mut hasher, mut have) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let io = |source: std::io::Error| StoreError::Io { dir: dir.clone(), source };
        std::fs::create_dir_all(&partial_dir).map_err(io)?;
        let mut file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
        if file.try_lock().is_err() {
            return Err(StoreError::Invalid(format!("{url} is already being pulled; wait for that pull to finish")));
        }
        let mut hasher = Sha256::new();
        let have = hash_into(&mut file, &mut hasher).map_err(io)?;
        Ok((file, hasher, have))
    })
    .await
    .map_err(|e| StoreError::Download(format!("pull task failed: {e}")))??;

    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
        // Every address is checked when connecting, redirects included.
        .dns_resolver(limits.reach.resolver())
        .redirect(limits.reach.redirects())
        .build()
        .map_err(|e| StoreError::Download(e.to_string()))?;
    let mut request = client.get(&plan.url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let resp = request.send().await.map_err(|e| StoreError::Download(format!("{}: {}", plan.url, error_chain(&e))))?;
    let status = resp.status();
    let total = if status == reqwest::StatusCode::PARTIAL_CONTENT && have > 0 {
        let (start, total) = content_range(&resp).ok_or_else(|| StoreError::Download("server sent a partial response without a usable Content-Range".into()))?;
        if start != have {
            return Err(StoreError::Download(format!("server resumed at byte {start}, expected {have}")));
        }
        total
    } else if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
        // The kept part may already be the whole file; verification below decides.
        Some(have)
    } else if status.is_success() {
        if have > 0 {
            tracing::info!("server ignored the range request; downloading {} from the start", plan.url);
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            hasher = Sha256::new();
            have = 0;
        }
        resp.content_length()
    } else {
        return Err(StoreError::Download(format!("{} answered {status}", plan.url)));
    };

    let too_large = |size: u64| limits.max_bytes.filter(|limit| size > *limit).map(|limit| StoreError::TooLarge { size, limit });
    if let Some(e) = total.and_then(too_large) {
        return Err(e);
    }
    if let (Some(total), Some(free)) = (total, store.free_space()) {
        let needed = total.saturating_sub(have);
        if needed > free {
            return Err(StoreError::NoSpace {
                needed,
                available: free,
                dir: store.dir().display().to_string(),
            });
        }
    }

    let label = plan.sha256.clone();
    let status_line = format!("pulling {}", plan.name);
    let progress = |completed: u64| Progress {
        status: status_line.clone(),
        digest: label.clone(),
        total,
        completed: Some(completed),
    };
    report(progress(have));
    let started_at = have;
    file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
    if status != reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
        let mut body = resp.bytes_stream();
        let mut last = Instant::now();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                StoreError::Download(format!(
                    "connection lost after {have} bytes ({e}); run the same pull again to resume"
                ))
            })?;
            file.write_all(&chunk).map_err(io)?;
            hasher.update(&chunk);
            have += chunk.len() as u64;
            // A server that sent no length, or lied about it.
            if let Some(e) = too_large(have) {
                return Err(e);
            }
            if last.elapsed() >= PROGRESS_EVERY {
                report(progress(have));
                last = Instant::now();
            }
        }
    }
    report(progress(have));
    if let Some(total) = total {
        if have != total {
            return Err(StoreError::Download(format!(
                "got {have} of {total} bytes; run the same pull again to resume"
            )));
        }
    }
    let file = tokio::task::spawn_blocking(move || file.sync_all().map(|()| file))
        .await
        .map_err(|e| StoreError::Download(format!("pull task failed: {e}")))?
        .map_err(io)?;

    report(Progress::status("verifying sha256 digest"));
    let digest = format!("sha256:{:x}", hasher.finalize());
    if let Some(expected) = &plan.sha256 {
        if *expected != digest {
            drop(file);
            let _ = std::fs::remove_file(&partial_path);
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
    }
    let path = partial_path.clone();
    let header = tokio::task::spawn_blocking(move || read_gguf(&path)).await.map_err(|e| StoreError::Download(format!("pull task failed: {e}")))?;
    let info = match header {
        Ok(info) => info,
        Err(source) => {
            drop(file);
            let _ = std::fs::remove_file(&partial_path);
            return Err(StoreError::Gguf { what: plan.url.clone(), source });
        }
    };
    if let Some(warning) = check(&info) {
        report(Progress::status(format!("warning: {warning}")));
    }
    report(Progress::status("writing manifest"));
    store.commit_blob(&partial_path, &digest)?;
    drop(file);
    let mut manifest = Manifest::for_weights(digest.clone(), have, Some(plan.source.clone()));
    manifest.license = plan.license.clone().or_else(|| info.get_str("general.license").map(String::from));
    store.write_manifest(&plan.name, &manifest)?;
    report(Progress::status("success"));
    Ok(Pulled {
        name: plan.name.clone(),
        digest,
        size: have,
        downloaded: have - started_at,
        info,
    })
}

/// An error with its causes: reqwest's top message alone hides why a connect failed (such as
/// the resolver refusing a private address).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Feeds the whole of `file` to `hasher`; returns its length.
fn hash_into(file: &mut std::fs::File, hasher: &mut Sha256) -> std::io::Result<u64> {
    file.rewind()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(n_total);
        }
        hasher.update(&buf[..n]);
        n_total += n as u64;
    }
}

/// (first byte, total length) of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range(resp: &reqwest::Response) -> Option<(u64, Option<u64>)> {
    let v = resp.headers().get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_urls_hf_paths_and_catalog_names() {
        let p = plan("http://127.0.0.1:9/dir/SmolLM2-135M.Q4_1.gguf", None).expect("url");
        assert_eq!(p.name, "smollm2-135m.q4_1:latest");
        let p = plan("hf://owner/repo/sub/x.gguf", Some("mine:v1")).expect("hf");
        assert_eq!(p.url, "https://huggingface.co/owner/repo/resolve/main/sub/x.gguf");
        assert_eq!(p.name, "mine:v1");
        let p = plan("qwen2.5:0.5b", None).expect("catalog");
        assert!(p.url.starts_with("https://huggingface.co/"));
        assert!(matches!(plan("nope:1b", None), Err(StoreError::NotFound(_))));
        assert!(plan("hf://owner/../x.gguf", None).is_err());
        assert!(plan("http://127.0.0.1/x.gguf", Some("../evil")).is_err());
    }
}
