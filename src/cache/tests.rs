//! Tests for the response cache: the memory backend directly, Redis through a real
//! `redis-server` started on a free loopback port (in the integration tier: `--features
//! integration`, which `scripts/test.sh` turns on after installing redis-server).

#[cfg(feature = "integration")]
use std::net::{TcpListener, TcpStream};
#[cfg(feature = "integration")]
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

fn memory_settings(max_bytes: u64, ttl: Duration) -> CacheSettings {
    CacheSettings {
        enabled: true,
        ttl,
        max_bytes,
        redis_url: None,
    }
}

fn redis_settings(url: String) -> CacheSettings {
    CacheSettings {
        enabled: true,
        redis_url: Some(url),
        ..CacheSettings::default()
    }
}

fn key(name: &str) -> CacheKey {
    CacheKey::of(&[name.as_bytes()])
}

#[test]
fn keys_prefix_each_part_with_its_length() {
    assert_ne!(CacheKey::of(&[b"ab", b"c"]), CacheKey::of(&[b"a", b"bc"]));
    assert_ne!(CacheKey::of(&[b"abc"]), CacheKey::of(&[b"ab", b"c"]));
    assert_ne!(CacheKey::of(&[b""]), CacheKey::of(&[]));
    assert_eq!(CacheKey::of(&[b"a", b"bc"]), CacheKey::of(&[b"a", b"bc"]));
}

#[test]
fn key_hex_is_64_lowercase_digits_of_the_digest() {
    let key = CacheKey::of(&[]);
    let hex = key.to_hex();
    assert_eq!(hex.len(), 64);
    assert!(
        hex.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{hex}"
    );
    // sha256 of the empty input: no parts means nothing was hashed.
    assert_eq!(
        hex,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn defaults_are_on_one_hour_and_256_mib() {
    let settings = CacheSettings::default();
    assert!(settings.enabled);
    assert_eq!(settings.ttl, Duration::from_secs(3600));
    assert_eq!(settings.max_bytes, 256 * 1024 * 1024);
    assert_eq!(settings.redis_url, None);
}

#[tokio::test]
async fn memory_put_then_get_hits_and_unknown_key_misses() {
    let cache = ResponseCache::new(&memory_settings(1 << 20, Duration::from_secs(60)))
        .expect("memory cache builds");
    assert_eq!(cache.backend(), "memory");
    assert_eq!(cache.get(&key("a")).await, Lookup::Miss);
    cache.put(&key("a"), b"response".to_vec()).await;
    assert_eq!(
        cache.get(&key("a")).await,
        Lookup::Hit(Bytes::from_static(b"response"))
    );
    assert_eq!(cache.get(&key("b")).await, Lookup::Miss);

    cache.settle().await;
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.stores, stats.unavailable),
        (1, 2, 1, 0)
    );
    assert_eq!(stats.entries, Some(1));
    assert_eq!(stats.bytes, Some(memory::entry_weight(b"response".len())));
}

#[tokio::test]
async fn memory_entries_expire_after_the_ttl() {
    let cache = ResponseCache::new(&memory_settings(1 << 20, Duration::from_millis(200)))
        .expect("memory cache builds");
    cache.put(&key("a"), b"v".to_vec()).await;
    assert!(matches!(cache.get(&key("a")).await, Lookup::Hit(_)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cache.get(&key("a")).await, Lookup::Miss);
}

#[tokio::test]
async fn memory_backend_stays_within_its_byte_bound() {
    let max_bytes = 2_000;
    let cache = ResponseCache::new(&memory_settings(max_bytes, Duration::from_secs(60)))
        .expect("memory cache builds");
    for i in 0..100 {
        cache.put(&key(&i.to_string()), vec![7u8; 200]).await;
    }
    cache.settle().await;
    let stats = cache.stats();
    let bytes = stats.bytes.expect("memory reports bytes");
    let entries = stats.entries.expect("memory reports entries");
    assert!(bytes <= max_bytes, "{bytes} bytes held, bound {max_bytes}");
    assert!(
        entries <= max_bytes / memory::entry_weight(200),
        "{entries} entries held"
    );
    assert!(entries > 0, "the cache kept nothing");
}

#[tokio::test]
async fn values_over_an_eighth_of_max_bytes_are_not_stored() {
    let cache = ResponseCache::new(&memory_settings(8_000, Duration::from_secs(60)))
        .expect("memory cache builds");
    cache.put(&key("big"), vec![0u8; 1_001]).await;
    cache.put(&key("fits"), vec![0u8; 1_000]).await;
    assert_eq!(cache.get(&key("big")).await, Lookup::Miss);
    assert!(matches!(cache.get(&key("fits")).await, Lookup::Hit(_)));
    let stats = cache.stats();
    assert_eq!((stats.oversized, stats.stores), (1, 1));
}

#[tokio::test]
async fn memory_clear_counts_what_it_removed() {
    let cache = ResponseCache::new(&memory_settings(1 << 20, Duration::from_secs(60)))
        .expect("memory cache builds");
    for name in ["a", "b", "c"] {
        cache.put(&key(name), name.as_bytes().to_vec()).await;
    }
    assert_eq!(cache.clear().await.expect("memory clear"), 3);
    assert_eq!(cache.get(&key("a")).await, Lookup::Miss);
    assert_eq!(cache.clear().await.expect("memory clear"), 0);
    assert_eq!(cache.stats().entries, Some(0));
}

#[tokio::test]
async fn disabled_cache_misses_and_counts_nothing() {
    let settings = CacheSettings {
        enabled: false,
        ..memory_settings(1 << 20, Duration::from_secs(60))
    };
    let cache = ResponseCache::new(&settings).expect("disabled cache builds");
    cache.put(&key("a"), b"v".to_vec()).await;
    assert_eq!(cache.get(&key("a")).await, Lookup::Miss);
    assert_eq!(cache.clear().await.expect("disabled clear"), 0);
    let stats = cache.stats();
    assert_eq!(stats.backend, "disabled");
    assert_eq!(
        (stats.hits, stats.misses, stats.stores, stats.unavailable),
        (0, 0, 0, 0)
    );
    assert_eq!(cache.status().await.backend, "disabled");
}

#[test]
fn bad_redis_urls_are_refused_at_start_with_a_usable_message() {
    for url in [
        "http://localhost:6379",
        "not a url",
        "redis://",
        "rediss://localhost:6379",
    ] {
        let error = ResponseCache::new(&redis_settings(url.to_string()))
            .expect_err(&format!("{url} should be refused"));
        let message = error.to_string();
        assert!(
            matches!(error, CacheError::InvalidRedisUrl { .. }),
            "{url}: {message}"
        );
        assert!(
            message.contains("redis://"),
            "{url}: message gives no example: {message}"
        );
    }
}

#[test]
fn invalid_ttl_and_size_are_refused() {
    let zero_ttl = memory_settings(1 << 20, Duration::ZERO);
    assert!(matches!(
        ResponseCache::new(&zero_ttl),
        Err(CacheError::InvalidSetting { setting: "ttl", .. })
    ));
    let zero_bytes = memory_settings(0, Duration::from_secs(1));
    assert!(matches!(
        ResponseCache::new(&zero_bytes),
        Err(CacheError::InvalidSetting {
            setting: "max_bytes",
            ..
        })
    ));
}

#[test]
fn passwords_are_masked_in_messages() {
    assert_eq!(
        mask_password("redis://:s3cret@host:6379/0"),
        "redis://:***@host:6379/0"
    );
    assert_eq!(
        mask_password("redis://me:s3cret@host"),
        "redis://me:***@host"
    );
    assert_eq!(mask_password("redis://host:6379"), "redis://host:6379");
    let error = ResponseCache::new(&redis_settings("redis://:s3cret@host:notaport".to_string()))
        .expect_err("a bad port is refused");
    assert!(!error.to_string().contains("s3cret"), "{error}");
}

#[tokio::test]
async fn unreachable_redis_is_not_an_error_at_start_and_answers_unavailable_fast() {
    let cache = ResponseCache::new(&redis_settings("redis://127.0.0.1:1".to_string()))
        .expect("an unreachable redis is not a start-up error");
    assert_eq!(cache.backend(), "redis");
    let started = Instant::now();
    assert_eq!(cache.get(&key("a")).await, Lookup::Unavailable);
    // Inside the down window: answered without trying.
    assert_eq!(cache.get(&key("a")).await, Lookup::Unavailable);
    cache.put(&key("a"), b"v".to_vec()).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    let stats = cache.stats();
    assert_eq!(
        (
            stats.unavailable,
            stats.store_errors,
            stats.hits,
            stats.misses
        ),
        (2, 1, 0, 0)
    );
    let health = cache.status().await;
    assert!(!health.reachable);
    assert!(health.detail.is_some());
    assert!(cache.clear().await.is_err());
}

#[cfg(feature = "integration")]
/// A `redis-server` this test started; killed by PID when dropped, even on panic.
struct RedisServer {
    child: Child,
}

#[cfg(feature = "integration")]
impl RedisServer {
    fn start(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (install it: scripts/test.sh does)");
        let server = RedisServer { child };
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port} in 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

#[cfg(feature = "integration")]
impl Drop for RedisServer {
    fn drop(&mut self) {
        // Child::kill signals this child's own PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(feature = "integration")]
fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

#[cfg(feature = "integration")]
fn redis_server_present() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[cfg(feature = "integration")]
#[tokio::test]
async fn redis_is_shared_cleared_and_survives_a_restart() {
    assert!(redis_server_present(), "redis-server is not on PATH: install it (scripts/test.sh does)");
    let port = free_loopback_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut server = RedisServer::start(port);

    let first = ResponseCache::new(&redis_settings(url.clone())).expect("first instance");
    let second = ResponseCache::new(&redis_settings(url.clone())).expect("second instance");
    assert!(first.status().await.reachable);

    first.put(&key("shared"), b"from the first".to_vec()).await;
    first.put(&key("other"), b"x".to_vec()).await;
    assert_eq!(
        second.get(&key("shared")).await,
        Lookup::Hit(Bytes::from_static(b"from the first"))
    );
    assert_eq!(second.get(&key("absent")).await, Lookup::Miss);

    // A key that is not ours must survive clear.
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let () = redis::cmd("SET")
        .arg("someone:else")
        .arg("keep")
        .query_async(&mut raw)
        .await
        .expect("set foreign key");
    let ttl: i64 = redis::cmd("TTL")
        .arg(redis_store::redis_key(&key("shared")))
        .query_async(&mut raw)
        .await
        .expect("ttl");
    assert!((3590..=3600).contains(&ttl), "entry TTL {ttl}");

    assert_eq!(second.clear().await.expect("clear"), 2);
    assert_eq!(first.get(&key("shared")).await, Lookup::Miss);
    let foreign: Option<String> = redis::cmd("GET")
        .arg("someone:else")
        .query_async(&mut raw)
        .await
        .expect("get");
    assert_eq!(foreign.as_deref(), Some("keep"));

    drop(server);
    let started = Instant::now();
    assert_eq!(first.get(&key("shared")).await, Lookup::Unavailable);
    assert_eq!(first.get(&key("shared")).await, Lookup::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(!first.status().await.reachable);

    server = RedisServer::start(port);
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        first.put(&key("again"), b"back".to_vec()).await;
        if first.get(&key("again")).await == Lookup::Hit(Bytes::from_static(b"back")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cache did not recover after redis restarted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first.stats().unavailable >= 2);
    drop(server);
}
