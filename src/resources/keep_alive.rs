//! Ollama's `keep_alive`: a number of seconds or a duration string; negative keeps the model
//! loaded forever, zero unloads it right after the request.

use std::time::Duration;

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
                Ok(Self::from_secs(secs))
            }
            serde_json::Value::String(s) => Self::parse(s),
            _ => Err("keep_alive must be a number of seconds or a duration like \"5m\"".to_string()),
        }
    }

    /// Parses `5m`, `1h30m`, `10s`, `300ms`, `-1`, `0`, or a bare number of seconds.
    pub fn parse(s: &str) -> Result<KeepAlive, String> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<f64>() {
            return Ok(Self::from_secs(secs));
        }
        if s.starts_with('-') {
            return Ok(KeepAlive::Forever);
        }
        humantime::parse_duration(s)
            .map(KeepAlive::For)
            .map_err(|e| format!("invalid keep_alive {s:?}: {e}"))
    }

    fn from_secs(secs: f64) -> KeepAlive {
        if secs < 0.0 || !secs.is_finite() {
            KeepAlive::Forever
        } else {
            KeepAlive::For(Duration::from_secs_f64(secs.min(1e12)))
        }
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
}
