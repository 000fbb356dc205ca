//! Scalars checked while serde reads them, so serde_yaml's error carries their line and path.
//! Each parser takes the value as text (numbers arrive as their decimal form) and is shared
//! with the environment overlays.

use super::*;

struct ScalarVisitor<T, F> {
    expecting: &'static str,
    parse: F,
    _out: PhantomData<T>,
}

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for ScalarVisitor<T, F> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        (self.parse)(v).map(Some).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

fn read<'de, D: Deserializer<'de>, T>(
    d: D,
    expecting: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error> {
    d.deserialize_any(ScalarVisitor {
        expecting,
        parse,
        _out: PhantomData,
    })
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let err = |detail: String| format!("invalid duration {s:?}: {detail}; use seconds (600) or a duration like 10m, 1h30m");
    if let Ok(secs) = s.parse::<f64>() {
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(err("it must be 0 or more".to_string()));
        }
        return Ok(Duration::from_secs_f64(secs.min(1e12)));
    }
    humantime::parse_duration(s).map_err(|e| err(e.to_string()))
}

pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err("a cache TTL of 0 keeps nothing; set cache.enabled: false to turn the cache off".to_string()),
        d => Ok(d),
    }
}

pub fn parse_count(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| format!("invalid count {s:?}: expected a whole number, 0 or more"))
}

fn parse_in_range<T: TryFrom<i64>>(s: &str, range: std::ops::RangeInclusive<i64>) -> Result<T, String> {
    let (min, max) = (*range.start(), *range.end());
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|v| range.contains(v))
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| format!("invalid value {s:?}: expected a whole number from {min} to {max}"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let err = || format!("invalid size {s:?}: use bytes with a unit (256MiB, 1GB) or plain bytes");
    if s.trim().ends_with('%') {
        return Err(err());
    }
    // The memory argument only scales percentages, refused above.
    crate::resources::budget::parse_budget(s, 0).map_err(|_| err())
}

/// A PostgreSQL URL (`postgres://` or `postgresql://`), checked without connecting; the
/// message never repeats a password.
pub fn parse_database_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
        return Err("must be a postgres:// URL, e.g. postgres://hearth@127.0.0.1:5432/hearth (absent = the embedded SQLite database)".into());
    }
    s.parse::<tokio_postgres::Config>().map(|_| s.to_string()).map_err(|_| "is not a PostgreSQL URL hearth can read".into())
}

pub fn database_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    read(d, "a postgres:// URL", parse_database_url)
}

pub fn parse_redis_url(s: &str) -> Result<String, String> {
    use redis::IntoConnectionInfo;
    let s = s.trim();
    // The URL may carry a password: the message never repeats it.
    s.into_connection_info()
        .map(|_| s.to_string())
        .map_err(|e| format!("invalid Redis URL ({e}); expected redis://[user:password@]host[:port][/db]"))
}

fn parse_price(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite() && *p >= 0.0)
        .ok_or_else(|| format!("invalid price {s:?}: expected a number, 0 or more"))
}

fn parse_model_name(s: &str) -> Result<String, String> {
    crate::store::normalize_name(s.trim()).map_err(|e| e.to_string())
}

pub fn host<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    read(d, "an address like 127.0.0.1:11434", |s| {
        crate::config::parse_host(s).map_err(|e| format!("invalid address {s:?}: {e}"))
    })
}
pub fn model_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    read(d, "a model name like smollm2:135m", parse_model_name)
}
pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    read(d, "a whole number", parse_count)
}
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    read(d, "a duration", parse_duration)
}
pub fn ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    read(d, "a duration", parse_ttl)
}
pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    read(d, "a size like 256MiB", parse_size)
}
pub fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    read(d, "a redis:// URL", parse_redis_url)
}
pub fn price<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    read(d, "a price per 1000 tokens", parse_price)
}
pub fn parallel<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    read(d, "a whole number", |s| parse_in_range(s, crate::config::PARALLEL_RANGE))
}
pub fn threads<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    read(d, "a whole number", |s| parse_in_range(s, crate::config::THREADS_RANGE))
}
pub fn context_length<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    read(d, "a whole number", |s| parse_in_range(s, crate::config::CONTEXT_LENGTH_RANGE))
}
pub fn batch_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    read(d, "a whole number", |s| parse_in_range(s, crate::config::BATCH_SIZE_RANGE))
}
pub fn convert_weights<'de, D: Deserializer<'de>>(d: D) -> Result<Option<crate::engine::convert::Weights>, D::Error> {
    read(d, "none or q8_0", crate::engine::convert::Weights::parse)
}
pub fn speculative<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    read(d, "lookup or off", crate::engine::lookup::parse_mode)
}
pub fn prefix_reuse<'de, D: Deserializer<'de>>(d: D) -> Result<Option<crate::engine::exact::Reuse>, D::Error> {
    read(d, "auto, exact or fast", crate::engine::exact::Reuse::parse)
}
pub fn keep_alive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<KeepAlive>, D::Error> {
    read(d, "a duration, 0, or -1", KeepAlive::parse)
}
pub fn ram_budget<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    read(d, "a size like 6GiB or a percentage like 80%", |s| {
        // Any memory size checks the syntax; the real one is applied at startup.
        crate::resources::budget::parse_budget(s, 1 << 40).map(|_| s.trim().to_string())
    })
}
