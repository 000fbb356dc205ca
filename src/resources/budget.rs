//! The RAM budget: how many bytes loaded models may take together.
//!
//! Default: 80% of the machine's memory, or of the cgroup memory limit when that is lower
//! (containers, systemd slices). Set as bytes with a unit (`6GiB`, `512MB`) or a percentage of
//! that memory (`60%`). Pure parsing plus one read of the machine's limits.

/// The memory hearth may plan against: physical RAM, capped by the cgroup limit.
pub fn machine_memory() -> u64 {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let total = sys.total_memory();
    match cgroup_limit() {
        Some(limit) if limit < total => limit,
        _ => total,
    }
}

/// The memory limit of this process's cgroup (v2, then v1), if one is set.
fn cgroup_limit() -> Option<u64> {
    let v2 = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|c| {
        let path = c.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
        std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", path.trim_end_matches('/')))
            .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/memory.max"))
            .ok()
    });
    let raw = v2.or_else(|| std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok())?;
    // "max" (v2) or a huge number (v1) mean no limit.
    raw.trim().parse::<u64>().ok().filter(|&n| n < (1u64 << 60))
}

/// Parses a budget: `80%`, `6GiB`, `6GB`, `512MiB`, `1.5G`, or plain bytes.
pub fn parse_budget(spec: &str, memory: u64) -> Result<u64, String> {
    let s = spec.trim();
    let err = || format!("invalid RAM budget {spec:?}: use bytes with a unit (6GiB, 512MB) or a percentage (60%)");
    if let Some(p) = s.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| err())?;
        if !(p > 0.0 && p <= 100.0) {
            return Err(format!("RAM budget {spec:?} must be between 0% and 100%"));
        }
        return Ok((memory as f64 * p / 100.0) as u64);
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| err())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024.0f64.powi(4),
        _ => return Err(err()),
    };
    let bytes = n * mult;
    if !(bytes >= 1.0 && bytes.is_finite()) {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// 80% of `memory`.
pub fn default_budget(memory: u64) -> u64 {
    memory / 5 * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_percentages() {
        let mem = 10_000_000_000;
        assert_eq!(parse_budget("60%", mem), Ok(6_000_000_000));
        assert_eq!(parse_budget("6GiB", mem), Ok(6 * 1024 * 1024 * 1024));
        assert_eq!(parse_budget("512MB", mem), Ok(512_000_000));
        assert_eq!(parse_budget("1.5G", mem), Ok(1_500_000_000));
        assert_eq!(parse_budget("4096", mem), Ok(4096));
        assert!(parse_budget("lots", mem).is_err());
        assert!(parse_budget("150%", mem).is_err());
        assert!(parse_budget("0", mem).is_err());
        assert!(parse_budget("5 parsecs", mem).is_err());
    }

    #[test]
    fn default_is_eighty_percent() {
        assert_eq!(default_budget(1000), 800);
    }

    #[test]
    fn machine_memory_is_known() {
        assert!(machine_memory() > 0);
    }
}
