//! Test support: the real `hearth` binary on the real test models.
//!
//! `Server` starts `hearth serve --port 0` and reads the address it prints; dropping it ends
//! that process (by its PID, through the child handle). Models come from `HEARTH_TEST_MODELS`,
//! else hearth's default models directory, where `models/fetch-test-models.sh` puts them.

#![allow(dead_code)]

pub mod browser;
pub mod file_server;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const SMOL: &str = "smollm2:135m";
pub const GEMMA: &str = "gemma3:270m";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hearth")
}

pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("HEARTH_TEST_MODELS")
        .or_else(|| std::env::var_os("HEARTH_MODELS"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".local/share"));
            base.join("hearth/models")
        });
    for m in [SMOL, GEMMA] {
        let f = dir.join(format!("{m}.gguf"));
        assert!(f.is_file(), "test model {} is missing: run models/fetch-test-models.sh", f.display());
    }
    dir
}

pub fn model_path(name: &str) -> PathBuf {
    models_dir().join(format!("{name}.gguf"))
}

/// A `hearth` command with the test models directory.
pub fn hearth() -> Command {
    with_test_env(Command::new(bin()))
}

/// `c` (hearth, or a program that runs it) with the test models directory and none of the
/// service layer's variables.
fn with_test_env(mut c: Command) -> Command {
    c.env("HEARTH_MODELS", models_dir()).env_remove("HEARTH_HOST");
    // The service layer's variables would change what tests see: each test sets its own.
    for v in ["HEARTH_CONFIG", "REDIS_URL", "LLM_RESPONSE_CACHE_TTL", "MAX_CONCURRENT_REQUESTS", "REQUEST_TIMEOUT", "HEARTH_LOG_FORMAT"] {
        c.env_remove(v);
    }
    c
}

/// Runs `hearth ARGS` with `stdin` piped in.
pub fn run_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut cmd = hearth();
    cmd.args(args);
    output_with_stdin(cmd, stdin)
}

/// Runs a command with `stdin` piped in and its output collected.
pub fn output_with_stdin(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hearth");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait for hearth")
}

pub struct Server {
    child: Child,
    pub addr: String,
    pub client: reqwest::blocking::Client,
    /// Every line the server wrote to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Its data directory (conversations, profiles).
    pub data: PathBuf,
}

/// A fresh, empty directory under the system's temp dir, unique to this call.
pub fn temp_dir(label: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hearth-test-{}-{label}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Server {
        Server::start_with_env(extra, &[])
    }

    /// Starts `hearth serve` with `extra` flags and `env` variables; each server gets its own
    /// data directory unless `env` names one in `HEARTH_DATA`.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_command(hearth(), extra, env)
    }

    /// Starts `hearth serve` as `start_with` does, moved into the cgroup whose `cgroup.procs`
    /// file is `procs` before it runs (a shell writes its own PID there, then execs hearth, so
    /// the PID stays the child's).
    pub fn start_in_cgroup(procs: &std::path::Path, extra: &[&str]) -> Server {
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo $$ > \"$0\" && exec \"$@\""]).arg(procs).arg(bin());
        Server::start_command(with_test_env(sh), extra, &[])
    }

    /// Starts `cmd serve ...`, where `cmd` is hearth or a program that execs it.
    fn start_command(mut cmd: Command, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let data = match env.iter().find(|(k, _)| *k == "HEARTH_DATA") {
            Some((_, d)) => PathBuf::from(d),
            None => temp_dir("data"),
        };
        cmd.env("HEARTH_DATA", &data).envs(env.iter().copied());
        cmd.args(["serve", "--host", "127.0.0.1"]);
        if !extra.contains(&"--port") {
            cmd.args(["--port", "0"]);
        }
        if !extra.contains(&"--context-length") {
            cmd.args(["--context-length", "2048"]);
        }
        let mut child = cmd
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hearth serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log").push(line.clone());
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
                }
                if std::env::var_os("HEARTH_TEST_VERBOSE").is_some() {
                    eprintln!("[server] {line}");
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("hearth serve did not report its address");
            }
        };
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .expect("client");
        Server { child, addr, client, log, data }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends the server at once with SIGKILL (its own child handle), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    /// Names of the models `/api/ps` lists.
    pub fn loaded(&self) -> Vec<String> {
        let ps: serde_json::Value = self.get("/api/ps").json().expect("ps json");
        ps["models"]
            .as_array()
            .expect("models")
            .iter()
            .filter_map(|m| m["name"].as_str().map(str::to_string))
            .collect()
    }

    pub fn log_count(&self, needle: &str) -> usize {
        self.log.lock().expect("log").iter().filter(|l| l.contains(needle)).count()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::blocking::Response {
        self.client.post(self.url(path)).json(body).send().expect("request")
    }

    pub fn post_raw(&self, path: &str, body: &'static str) -> reqwest::blocking::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("request")
    }

    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.client.get(self.url(path)).send().expect("request")
    }

    /// POSTs and parses every NDJSON line of the answer.
    pub fn ndjson(&self, path: &str, body: &serde_json::Value) -> Vec<serde_json::Value> {
        let resp = self.post(path, body);
        assert_eq!(resp.status(), 200, "status for {body}");
        let text = resp.text().expect("body");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}")))
            .collect()
    }

    /// Waits up to `limit` for the server to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The value of the first sample of a Prometheus metric whose line contains `labels`.
    pub fn metric(&self, name: &str, labels: &str) -> Option<f64> {
        let text = self.get("/metrics").text().expect("metrics");
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
    }

    pub fn alive(&self) -> bool {
        self.get("/api/version").status() == 200
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tests/SCRIPT` with the test venv's python (`HEARTH_TEST_PYTHON`) and `env`, and
/// checks that it succeeded and printed "all ok".
pub fn run_python(script: &str, env: &[(&str, &str)]) {
    let python = std::env::var("HEARTH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(&python)
        .arg(format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR")))
        .envs(env.iter().copied())
        .output()
        .expect("run python (set HEARTH_TEST_PYTHON to the test venv's python: scripts/test.sh does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all ok"), "{script}: {stdout}");
}

/// A redis-server on a free loopback port, ended by its PID when dropped.
pub struct Redis {
    child: std::process::Child,
    pub port: u16,
}

impl Redis {
    pub fn start(port: Option<u16>) -> Redis {
        let port = port.unwrap_or_else(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port());
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Redis { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
