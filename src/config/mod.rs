//! Settings from flags, environment and the YAML file, turned into validated values once.
//!
//! clap reads flags and their `HEARTH_*` environment variables (flags win); `file` reads the
//! YAML file with the other environment variables over it (`file::ENV_VARS`); `commands` lays
//! flags over the file. Each variable is read in one place. This module holds the defaults, the
//! ranges the flags and the file share, the defaults that depend on the machine (threads) and
//! the parsing of `HEARTH_HOST`-style addresses.

pub mod engine;
pub mod file;
pub mod serve;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::ops::RangeInclusive;

/// Ollama's port.
pub const DEFAULT_PORT: u16 = 11434;

// The engine settings' ranges, written once for the flags (clap) and the config file.
pub const PARALLEL_RANGE: RangeInclusive<i64> = 1..=64;
pub const THREADS_RANGE: RangeInclusive<i64> = 1..=1024;
pub const CONTEXT_LENGTH_RANGE: RangeInclusive<i64> = 16..=1_048_576;
pub const BATCH_SIZE_RANGE: RangeInclusive<i64> = 16..=8192;

/// `HEARTH_HOST`, the one place it is read: where `serve` listens (as `server.host`, over the
/// config file) and where the client commands (`ps`, `stop`) look for the server. Empty is
/// unset.
pub fn env_host(env: file::Env<'_>) -> Result<Option<SocketAddr>, file::ConfigError> {
    env("HEARTH_HOST")
        .filter(|v| !v.trim().is_empty())
        .map(|v| parse_host(&v).map_err(|message| file::ConfigError::Env { var: "HEARTH_HOST".into(), message }))
        .transpose()
}

/// `HEARTH_DATA`, the one place it is read: hearth's own data directory (as `server.data`,
/// over the config file). Empty is unset.
pub fn env_data_dir(env: file::Env<'_>) -> Option<std::path::PathBuf> {
    env("HEARTH_DATA").filter(|v| !v.trim().is_empty()).map(std::path::PathBuf::from)
}

/// Where hearth keeps its own data (conversations, profiles) unless `server.data`, `--data`
/// or `HEARTH_DATA` says: the per-user data directory.
pub fn default_data_dir() -> std::path::PathBuf {
    dirs::data_dir().unwrap_or_else(std::env::temp_dir).join("hearth")
}

/// Ollama's address: 127.0.0.1:11434.
pub fn default_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT)
}

/// Threads for llama.cpp: the physical cores this process may use. Hyper-threads share the
/// same SIMD units, and measured decode speed drops by whole factors past the physical count.
pub fn default_threads() -> i32 {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    threads_for(logical, sysinfo::System::physical_core_count())
}

/// Physical cores, within the CPUs this process may use (`available_parallelism` honours
/// affinity masks and cgroup quotas); at least one.
fn threads_for(usable: usize, physical: Option<usize>) -> i32 {
    i32::try_from(physical.unwrap_or(usable).min(usable).max(1)).unwrap_or(i32::MAX)
}

/// Parses `host`, `host:port`, `:port`, or `http://host:port` (as `OLLAMA_HOST` accepts).
pub fn parse_host(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let s = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .unwrap_or(s)
        .trim_end_matches('/');
    if s.is_empty() {
        return Ok(default_addr());
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => {
            let port = p.parse::<u16>().map_err(|_| format!("invalid port in {s:?}"))?;
            (if h.is_empty() { "127.0.0.1" } else { h }, port)
        }
        None => (s, DEFAULT_PORT),
    };
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host:?} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(parse_host("").expect("ok").to_string(), "127.0.0.1:11434");
        assert_eq!(parse_host("0.0.0.0:8080").expect("ok").to_string(), "0.0.0.0:8080");
        assert_eq!(parse_host(":9000").expect("ok").to_string(), "127.0.0.1:9000");
        assert_eq!(parse_host("127.0.0.1").expect("ok").to_string(), "127.0.0.1:11434");
        assert_eq!(parse_host("http://[::1]:5000/").expect("ok").to_string(), "[::1]:5000");
        assert!(parse_host("127.0.0.1:notaport").is_err());
    }

    #[test]
    fn threads_are_physical_cores_within_the_usable_cpus() {
        // 8 hyperthreads on 4 cores: one per core.
        assert_eq!(threads_for(8, Some(4)), 4);
        // A cgroup quota of 2 CPUs on a 16-core machine.
        assert_eq!(threads_for(2, Some(16)), 2);
        // Physical count unknown: every usable CPU.
        assert_eq!(threads_for(6, None), 6);
        assert_eq!(threads_for(1, Some(0)), 1);
    }
}
