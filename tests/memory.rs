//! The weights' memory on the real binary. Where the CPU kernels repack weights (x86 with AVX2:
//! Q8_0 and Q5_0, build.rs `REPACKED`), the model file's pages that only fed the repacking are
//! handed back after the load (`engine::pages`), so the weights do not count twice in the RSS.
//! The control: with the `sse42` kernels forced, nothing is repacked, the weights are computed
//! from the mapping, and its pages stay resident, which shows the measure sees them.

use std::path::Path;

use serde_json::json;

use crate::support::{hearth, model_path, Server, GEMMA};

/// Bytes of `path`'s mappings resident in process `pid` (`/proc/PID/smaps`).
fn resident_of_file(pid: u32, path: &Path) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let path = path.to_str().expect("a UTF-8 path");
    let mut in_file = false;
    let mut kb = 0;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A mapping's header: range, permissions, offset, device, inode, then the path.
        if fields.len() >= 5 && fields[0].contains('-') && fields[0].chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_file = fields.len() >= 6 && fields[5..].join(" ") == path;
        } else if in_file && fields.first() == Some(&"Rss:") {
            kb += fields[1].parse::<u64>().expect("Rss in kB");
        }
    }
    kb * 1024
}

/// The kernels `hearth --version` names, with `HEARTH_CPU_VARIANT` set to `forced` if given.
fn kernels(forced: Option<&str>) -> String {
    let mut cmd = hearth();
    if let Some(v) = forced {
        cmd.env("HEARTH_CPU_VARIANT", v);
    }
    let out = cmd.arg("--version").output().expect("hearth --version");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find_map(|l| l.strip_prefix("cpu kernels: ")).unwrap_or_else(|| panic!("{text}"));
    line.split([';', ' ']).next().expect("a name").to_string()
}

/// The resident bytes of Gemma 3's file in a server that has answered one request.
fn model_file_resident(forced: Option<&str>) -> u64 {
    let env: Vec<(&str, &str)> = forced.map(|v| ("HEARTH_CPU_VARIANT", v)).into_iter().collect();
    let s = Server::start_with_env(&["--parallel", "1"], &env);
    let body = json!({"model": GEMMA, "prompt": "Name three colours.", "stream": false, "options": {"num_predict": 4}});
    let r = s.post("/api/generate", &body);
    assert_eq!(r.status(), 200);
    let path = model_path(GEMMA).canonicalize().expect("the model file");
    resident_of_file(s.pid(), &path)
}

#[test]
fn repacked_weights_leave_the_model_files_pages() {
    let size = std::fs::metadata(model_path(GEMMA)).expect("the model file").len();
    assert_eq!(kernels(Some("sse42")), "sse42");
    let control = model_file_resident(Some("sse42"));
    assert!(
        control > size * 3 / 4,
        "with nothing repacked, {} of the file's {} MiB are resident after a request",
        control >> 20,
        size >> 20
    );
    let best = kernels(None);
    if !matches!(best.as_str(), "haswell" | "alderlake" | "skylakex" | "icelake") {
        eprintln!("the {best} kernels repack nothing: only the control ran");
        return;
    }
    // Gemma 3 270M Q4_K_M: the Q8_0 output layer (its embedding, of which a request reads a few
    // rows) and the Q5_0 matrices are repacked, most of the file; Q4_K and Q6_K are not.
    let repacked = model_file_resident(None);
    assert!(
        repacked < size / 4,
        "with the {best} kernels, {} of the file's {} MiB are still resident after a request",
        repacked >> 20,
        size >> 20
    );
}
