//! Ollama's `keep_alive`: a number of seconds or a duration string; negative keeps the model
//! loaded forever, zero unloads it right after the request.

use std::time::Duration;

/// The longest `keep_alive` taken: ten years.
pub const MAX: Duration = Duration::from_secs(10 * 365 * 86_400);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    For(Duration),
    Forever,
}

impl KeepAlive {
    /// Parses the JSON value of `keep_alive`.
    pub fn from_json(v: &serde_json::Value) -> Result<KeepAlive, String> {
        match v {
            serde_json::Value::Number(n) => {
                let secs = n.as_f64().ok_or("keep_alive is not a number")?;
                Self::from_secs(secs)
            }
            serde_json::Value::String(s) => Self::parse(s),
            _ => Err("keep_alive must be a number of seconds or a duration like \"5m\"".to_string()),
        }
    }

    /// Parses `5m`, `1h30m`, `10s`, `300ms`, `-1`, `0`, or a bare number of seconds.
    pub fn parse(s: &str) -> Result<KeepAlive, String> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<f64>() {
            return Self::from_secs(secs);
        }
        if s.starts_with('-') {
            return Ok(KeepAlive::Forever);
        }
        let short: String = s.chars().take(40).collect();
        humantime::parse_duration(s)
            .map_err(|e| format!("invalid keep_alive {short:?}: {e}"))
            .and_then(KeepAlive::checked)
    }

    fn from_secs(secs: f64) -> Result<KeepAlive, String> {
        if !secs.is_finite() {
            return Err("keep_alive must be a finite number of seconds".to_string());
        }
        if secs < 0.0 {
            return Ok(KeepAlive::Forever);
        }
        KeepAlive::checked(Duration::from_secs_f64(secs.min(MAX.as_secs_f64() * 2.0)))
    }

    /// At most [`MAX`]: a longer time is a mistake (use a negative value for forever).
    fn checked(d: Duration) -> Result<KeepAlive, String> {
        if d > MAX {
            return Err(format!("keep_alive {} is longer than the limit of 10 years; use -1 to keep the model loaded", humantime::format_duration(d)));
        }
        Ok(KeepAlive::For(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_ollama_forms() {
        assert_eq!(KeepAlive::parse("5m"), Ok(KeepAlive::For(Duration::from_secs(300))));
        assert_eq!(KeepAlive::parse("1h30m"), Ok(KeepAlive::For(Duration::from_secs(5400))));
        assert_eq!(KeepAlive::parse("0"), Ok(KeepAlive::For(Duration::ZERO)));
        assert_eq!(KeepAlive::parse("-1"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::parse("-5m"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::from_json(&json!(2)), Ok(KeepAlive::For(Duration::from_secs(2))));
        assert_eq!(KeepAlive::from_json(&json!(-1)), Ok(KeepAlive::Forever));
        assert!(KeepAlive::parse("soon").is_err());
        assert!(KeepAlive::from_json(&json!([1])).is_err());
    }

    #[test]
    fn ten_years_at_most() {
        assert_eq!(KeepAlive::parse("87600h"), Ok(KeepAlive::For(MAX)));
        assert!(KeepAlive::parse("87601h").expect_err("too long").contains("-1"));
        assert!(KeepAlive::from_json(&json!(1e20)).is_err());
        assert!(KeepAlive::from_json(&json!(1e308)).is_err());
    }
}
