//! Which idle models to unload so a new one fits: least recently used first, never one with
//! requests in flight. Pure: the manager passes a snapshot and acts on the answer.

use tokio::time::Instant;

/// A loaded model as the policy sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub bytes: u64,
    pub busy: bool,
    pub last_used: Instant,
}

/// What must hold after loading: bytes within `budget` and, if capped, at most `max_loaded`
/// models (the new one included).
#[derive(Debug, Clone, Copy)]
pub struct Room {
    /// Bytes in use now, loaded models and instances still being freed alike.
    pub used: u64,
    pub need: u64,
    pub budget: u64,
    pub max_loaded: Option<usize>,
}

/// The idle models to unload, oldest first, so that `room` holds; `None` when unloading every
/// idle model would still not be enough (the caller waits for busy ones to finish).
pub fn choose_evictions(candidates: &[Candidate], room: Room) -> Option<Vec<String>> {
    let mut idle: Vec<&Candidate> = candidates.iter().filter(|c| !c.busy).collect();
    idle.sort_by_key(|c| c.last_used);
    let mut used = room.used;
    let mut count = candidates.len();
    let mut chosen = Vec::new();
    let fits = |used: u64, count: usize| {
        used.saturating_add(room.need) <= room.budget && room.max_loaded.is_none_or(|m| count < m)
    };
    for c in idle {
        if fits(used, count) {
            break;
        }
        used = used.saturating_sub(c.bytes);
        count -= 1;
        chosen.push(c.name.clone());
    }
    fits(used, count).then_some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cand(name: &str, bytes: u64, busy: bool, age_s: u64) -> Candidate {
        Candidate {
            name: name.into(),
            bytes,
            busy,
            last_used: Instant::now() - Duration::from_secs(age_s),
        }
    }

    fn room(used: u64, need: u64, budget: u64) -> Room {
        Room { used, need, budget, max_loaded: None }
    }

    #[test]
    fn nothing_to_do_when_it_fits() {
        let c = [cand("a", 100, false, 10)];
        assert_eq!(choose_evictions(&c, room(100, 100, 300)), Some(vec![]));
    }

    #[test]
    fn least_recently_used_goes_first() {
        let c = [cand("new", 100, false, 1), cand("old", 100, false, 50), cand("mid", 100, false, 20)];
        assert_eq!(choose_evictions(&c, room(300, 100, 300)), Some(vec!["old".to_string()]));
        assert_eq!(choose_evictions(&c, room(300, 200, 300)), Some(vec!["old".to_string(), "mid".to_string()]));
    }

    #[test]
    fn busy_models_are_never_chosen() {
        let c = [cand("busy", 200, true, 99), cand("idle", 100, false, 1)];
        assert_eq!(choose_evictions(&c, room(300, 100, 300)), Some(vec!["idle".to_string()]));
        // Even unloading every idle model is not enough: wait.
        assert_eq!(choose_evictions(&c, room(300, 200, 300)), None);
    }

    #[test]
    fn the_cap_on_loaded_models_evicts_too() {
        let c = [cand("a", 1, false, 5), cand("b", 1, false, 9)];
        let r = Room { used: 2, need: 1, budget: 1000, max_loaded: Some(2) };
        assert_eq!(choose_evictions(&c, r), Some(vec!["b".to_string()]));
    }
}
