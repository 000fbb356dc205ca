//! `auth:`: the API keys, inline (`auth.keys`) or in a file of their own (`auth.keys_file`,
//! a YAML list of the same entries, so the main config can be shared without them). Each key
//! is stored as the SHA-256 of the key, never the key (`hearth key new` makes one).
//!
//! ```yaml
//! auth:
//!   keys:
//!     - name: laptop
//!       sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//!       scopes: [generate, embed, models:read]
//!       rpm: 60          # requests per minute
//!       tpm: 20000       # tokens per minute
//!       tpd: 1000000     # tokens per rolling day
//!   keys_file: keys.yaml
//! ```
//!
//! Values are checked while serde reads them, so errors name their line.

use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::locate::{invalid_at, yaml_error};
use super::ConfigError;
use crate::service::accounts::{KeySpec, Limits, Scope};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    keys: Option<Vec<RawKey>>,
    keys_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    #[serde(deserialize_with = "key_name")]
    name: String,
    #[serde(deserialize_with = "sha256")]
    sha256: [u8; 32],
    #[serde(deserialize_with = "scopes")]
    scopes: Vec<Scope>,
    #[serde(default, deserialize_with = "limit")]
    rpm: Option<u64>,
    #[serde(default, deserialize_with = "limit")]
    tpm: Option<u64>,
    #[serde(default, deserialize_with = "limit")]
    tpd: Option<u64>,
}

/// The keys of `auth:` and of its `keys_file` (resolved against `base`), checked for
/// duplicate names and keys.
pub(super) fn keys(raw: Option<RawAuth>, text: &str, origin: &str, base: Option<&Path>) -> Result<Vec<KeySpec>, ConfigError> {
    let raw = raw.unwrap_or_default();
    let mut specs: Vec<KeySpec> = raw.keys.unwrap_or_default().into_iter().map(spec).collect();
    if let Some(file) = raw.keys_file {
        let path = super::resolve(base, file);
        let file_origin = path.display().to_string();
        let file_text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: file_origin.clone(), source })?;
        let listed: Vec<RawKey> = if file_text.trim().is_empty() { Vec::new() } else { serde_yaml::from_str(&file_text).map_err(|e| yaml_error(&file_origin, &e))? };
        specs.extend(listed.into_iter().map(spec));
    }
    for (i, k) in specs.iter().enumerate() {
        let earlier = &specs[..i];
        let problem = if earlier.iter().any(|e| e.name == k.name) {
            Some(format!("the key name {:?} is used twice", k.name))
        } else if earlier.iter().any(|e| e.sha256 == k.sha256) {
            Some(format!("keys {:?} and {:?} have the same sha256: one key, two entries", earlier.iter().find(|e| e.sha256 == k.sha256).map_or("", |e| e.name.as_str()), k.name))
        } else {
            None
        };
        if let Some(message) = problem {
            return Err(invalid_at(text, origin, &["auth", "keys"], message));
        }
    }
    Ok(specs)
}

fn spec(raw: RawKey) -> KeySpec {
    KeySpec { name: raw.name, sha256: raw.sha256, scopes: raw.scopes, limits: Limits { rpm: raw.rpm, tpm: raw.tpm, tpd: raw.tpd } }
}

/// Names label metrics and appear in `/api/usage`: short, plain.
fn key_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if name.is_empty() || name.len() > 64 || !plain {
        return Err(de::Error::custom(format!("invalid key name {name:?}: 1 to 64 letters, digits, '.', '_' or '-'")));
    }
    Ok(name)
}

fn sha256<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let text = String::deserialize(d)?;
    parse_sha256(text.trim()).ok_or_else(|| {
        de::Error::custom("expected the key's SHA-256 as 64 hex digits (`hearth key new` prints it; or `printf %s KEY | sha256sum`), not the key itself")
    })
}

pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn scopes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Scope>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    if names.is_empty() {
        return Err(de::Error::custom("a key needs at least one scope (generate, embed, models:read, models:write, metrics, admin)"));
    }
    names.iter().map(|n| n.parse::<Scope>().map_err(de::Error::custom)).collect()
}

fn limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<u64>::deserialize(d)? {
        Some(0) => Err(de::Error::custom("a limit is at least 1; leave it out for no limit")),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn keys_parse_with_scopes_and_limits() {
        let text = format!("auth:\n  keys:\n    - name: ci\n      sha256: {HASH}\n      scopes: [generate, models:read]\n      rpm: 60\n");
        let c = parse(&text, "t.yaml", &|_| None).expect("valid");
        assert_eq!(c.keys.len(), 1);
        assert_eq!(c.keys[0].sha256, crate::service::accounts::key_hash("test"));
        assert_eq!(c.keys[0].limits.rpm, Some(60));
        assert_eq!(c.keys[0].scopes.len(), 2);
    }

    #[test]
    fn bad_keys_name_their_line() {
        let cases = [
            ("    - name: ci\n      sha256: hunter2\n      scopes: [generate]\n", "t.yaml:3:", "64 hex digits"),
            (&format!("    - name: ci\n      sha256: {HASH}\n      scopes: [generat]\n"), "t.yaml:3:", "unknown scope \"generat\""),
            (&format!("    - name: ci\n      sha256: {HASH}\n      scopes: []\n"), "t.yaml:3:", "at least one scope"),
            (&format!("    - name: c i\n      sha256: {HASH}\n      scopes: [admin]\n"), "t.yaml:3:", "invalid key name"),
            (&format!("    - name: ci\n      sha256: {HASH}\n      scopes: [admin]\n      rpm: 0\n"), "t.yaml:3:", "at least 1"),
            (&format!("    - name: ci\n      sha256: {HASH}\n      scopes: [admin]\n    - name: ci\n      sha256: {}\n      scopes: [admin]\n", HASH.replace('9', "8")), "t.yaml:2:", "used twice"),
        ];
        for (keys, at, says) in cases {
            let text = format!("auth:\n  keys:\n{keys}");
            let e = parse(&text, "t.yaml", &|_| None).expect_err(says).to_string();
            assert!(e.starts_with(at) && e.contains(says), "{e}");
        }
    }
}
