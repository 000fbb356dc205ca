//! Threads from the CPU quota: a server started inside a cgroup allowed one CPU's worth of time
//! gives llama.cpp one thread (`/health` says how many it uses) and still answers, while the same
//! binary outside it uses one per physical core.
//!
//! The test makes its own cgroup: cgroup v2 with the cpu controller where `/sys/fs/cgroup` is
//! the unified hierarchy, else cgroup v1's `cpu` hierarchy. That takes root; where the cgroup
//! can't be made, or the machine has a single core (nothing to tell apart), it says so on stderr
//! and checks nothing.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::{Server, SMOL};

/// A cgroup of this test's own, limited to one CPU's time per period; removed when dropped (after
/// the server in it has ended).
struct OneCpu {
    dir: PathBuf,
    procs: PathBuf,
}

impl OneCpu {
    fn make() -> Result<OneCpu, String> {
        let name = format!("hearth-test-quota-{}", std::process::id());
        let unified = Path::new("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
        let (dir, limits): (PathBuf, Vec<(&str, &str)>) = if controllers.split_whitespace().any(|c| c == "cpu") {
            write(&unified.join("cgroup.subtree_control"), "+cpu")?;
            (unified.join(&name), vec![("cpu.max", "100000 100000")])
        } else if Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
            (Path::new("/sys/fs/cgroup/cpu").join(&name), vec![("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "100000")])
        } else {
            return Err("no cpu controller under /sys/fs/cgroup".into());
        };
        std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let group = OneCpu { procs: dir.join("cgroup.procs"), dir };
        for (file, value) in limits {
            write(&group.dir.join(file), value)?;
        }
        Ok(group)
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
}

fn threads(s: &Server) -> i64 {
    let health: Value = s.get("/health").json().expect("health json");
    health["threads"].as_i64().unwrap_or_else(|| panic!("no threads in /health: {health}"))
}

#[test]
fn a_cpu_quota_of_one_cpu_gives_one_thread() {
    let outside = threads(&Server::start());
    if outside < 2 {
        eprintln!("skipped: this machine gives hearth {outside} thread(s) without a quota, so a quota of one changes nothing");
        return;
    }
    let group = match OneCpu::make() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipped: can't make a cgroup with a CPU quota here ({e})");
            return;
        }
    };
    let s = Server::start_in_cgroup(&group.procs, &[]);
    let members = std::fs::read_to_string(&group.procs).expect("cgroup.procs");
    assert!(members.lines().any(|p| p.trim() == s.pid().to_string()), "server {} not in the cgroup: {members:?}", s.pid());
    assert_eq!(threads(&s), 1, "outside the cgroup: {outside}");
    // And it answers with that one thread.
    let body = json!({"model": SMOL, "prompt": "Hi", "stream": false, "options": {"num_predict": 4}});
    let r: Value = s.post("/api/generate", &body).json().expect("json");
    assert_eq!(r["done"], true, "{r}");
    assert!(r["eval_count"].as_u64().is_some_and(|n| n > 0), "{r}");
    drop(s);
}
