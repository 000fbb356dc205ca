//! Hostile and careless clients against the real server: clients that hang up while queued or
//! while their prompt is read (the decode reading it stops), slow headers, too many connections, wild numbers, and a
//! SIGTERM with answers still streaming. Each test asserts state (statuses, counts, the last
//! line of a stream), never how fast something happened.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Server, SMOL};

/// A prompt of about `words` tokens.
fn long_prompt(words: usize) -> String {
    (0..words).map(|i| format!("w{} ", i % 97)).collect()
}

/// Polls until `f` answers `Some`, for at most `limit`; panics with `what` otherwise.
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn clients_that_hang_up_leave_the_queue_and_their_work_stops() {
    let s = Server::start_with(&["--parallel", "1", "--max-queue", "1"]);
    let body = json!({"model": SMOL, "prompt": long_prompt(450), "options": {"num_predict": 1000}});
    // One client reading its prompt, one queued behind it: the headers mean each is admitted.
    let first = s.post("/api/generate", &body);
    let second = s.post("/api/generate", &body);
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let third = s.post("/api/generate", &json!({"model": SMOL, "prompt": "Hi", "stream": false, "options": {"num_predict": 1}}));
    assert_eq!(third.status(), 503, "the queue is full while both are there");
    drop(first);
    drop(second);
    // Both departures are noticed without any answer being produced for them, and their
    // places are free again.
    eventually(Duration::from_secs(60), "the departures were not noticed", || (s.metric("hearth_errors_total", "kind=\"client_left\"")? >= 2.0).then_some(()));
    let next = s.post("/api/generate", &json!({"model": SMOL, "prompt": "Hi", "stream": false, "options": {"num_predict": 1}}));
    assert_eq!(next.status(), 200);
    assert_eq!(s.metric("hearth_generated_tokens_total", SMOL), Some(1.0), "only the last request generated");
}

/// CPU seconds the process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
    let ticks = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

#[test]
fn a_client_that_hangs_up_stops_the_decode_reading_its_prompt() {
    // One batch holds the whole prompt: if the decode ran to its end, the prompt would stay
    // cached for the next request.
    let s = Server::start_with(&["--parallel", "1", "--context-length", "8192", "--batch-size", "8192"]);
    // Loads the model; its raw prompt shares no tokens with a chat's.
    let warm = s.post("/api/generate", &json!({"model": SMOL, "prompt": "Hi", "raw": true, "stream": false, "options": {"num_predict": 1}}));
    assert_eq!(warm.status(), 200);
    let chat = |stream: bool| json!({"model": SMOL, "messages": [{"role": "user", "content": long_prompt(2500)}], "max_tokens": 1, "stream": stream});
    let before = cpu_seconds(s.pid());
    let reading = s.post("/v1/chat/completions", &chat(true));
    assert_eq!(reading.status(), 200);
    // Half a CPU second in, the prompt's decode is under way (the rest of a request takes
    // milliseconds).
    eventually(Duration::from_secs(120), "the server never got busy", || (cpu_seconds(s.pid()) - before > 0.5).then_some(()));
    drop(reading);
    eventually(Duration::from_secs(120), "the departure was not noticed", || (s.metric("hearth_errors_total", "kind=\"client_left\"")? >= 1.0).then_some(()));
    let again = s.post("/v1/chat/completions", &chat(false));
    assert_eq!(again.status(), 200);
    let usage = &again.json::<Value>().expect("json")["usage"];
    assert!(usage["prompt_tokens"].as_u64().expect("prompt tokens") > 2500, "{usage}");
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0, "the stopped decode kept nothing");
}

#[test]
fn slow_headers_are_cut_and_connections_past_the_cap_get_a_json_503() {
    let dir = crate::support::temp_dir("conns");
    let config = dir.join("hearth.yaml");
    std::fs::write(&config, "server:\n  max_connections: 2\n").expect("write config");
    let s = Server::start_with(&["--config", config.to_str().expect("utf8")]);
    // Two connections that start a request and never finish its headers.
    let mut slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = TcpStream::connect(&s.addr).expect("connect");
            c.write_all(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n").expect("write");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(&s.addr).expect("connect");
    extra.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("write");
    let mut answer = String::new();
    extra.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    extra.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or("")).expect("a JSON body");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("2 connections")), "{body}");
    // The slow ones are closed by the server (header-read timeout), which frees their places.
    for c in &mut slow {
        c.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        let text = String::from_utf8_lossy(&rest);
        assert!(rest.is_empty() || text.starts_with("HTTP/1.1 408"), "a slow client got {text:?}");
    }
    eventually(Duration::from_secs(10), "no place freed", || (s.get("/health").status() == 200).then_some(()));
}

#[test]
fn sigterm_ends_open_streams_with_an_error_line() {
    let dir = crate::support::temp_dir("drain");
    let config = dir.join("hearth.yaml");
    std::fs::write(&config, "server:\n  drain: 1s\n").expect("write config");
    let mut s = Server::start_with(&["--config", config.to_str().expect("utf8"), "--parallel", "1", "--context-length", "8192"]);
    // A schema the answer can't finish early: at least 2000 numbers.
    let long = json!({"type": "array", "items": {"type": "integer"}, "minItems": 2000});
    let resp = s.post("/api/generate", &json!({"model": SMOL, "prompt": "List numbers.", "format": long, "options": {"num_predict": 8192}}));
    assert_eq!(resp.status(), 200);
    let mut lines = BufReader::new(resp).lines();
    let first: Value = serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json");
    assert_eq!(first["done"], false);
    let status = std::process::Command::new("kill").args(["-TERM", &s.pid().to_string()]).status().expect("kill -TERM");
    assert!(status.success());
    let rest: Vec<Value> = lines.map(|l| serde_json::from_str(&l.expect("read")).expect("json")).collect();
    let last = rest.last().expect("the stream went on until the drain limit");
    assert!(last["error"].as_str().is_some_and(|e| e.contains("shutting down")), "{last}");
    assert!(!rest.iter().any(|l| l["done"] == true), "the answer was cut, not finished");
    let exit = s.wait_exit(Duration::from_secs(60)).expect("the server exits after the drain");
    assert!(exit.success(), "{exit}");
}

#[test]
fn wild_numbers_are_refused_naming_the_field() {
    let s = Server::start();
    let base = json!({"model": SMOL, "prompt": "Hi", "stream": false});
    for (field, value) in [("num_predict", json!(1_000_000_000_000i64)), ("temperature", json!(1e308)), ("num_batch", json!(1u64 << 40))] {
        let mut body = base.clone();
        body["options"] = json!({ field: value });
        let resp = s.post("/api/generate", &body);
        assert_eq!(resp.status(), 400, "{field}");
        let v: Value = resp.json().expect("json");
        assert!(v["error"].as_str().is_some_and(|e| e.contains(field)), "{v}");
    }
    let mut body = base.clone();
    body["keep_alive"] = json!(1e20);
    assert_eq!(s.post("/api/generate", &body).status(), 400);
    let resp = s.post("/v1/completions", &json!({"model": SMOL, "prompt": "Hi", "max_tokens": 1_000_000_000_000i64}));
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().expect("json");
    assert_eq!(v["error"]["param"], "max_tokens", "{v}");
    // A 50 MB body and a malformed path are refused in JSON too.
    let big = vec![b' '; 50 << 20];
    let resp = s.client.post(s.url("/api/generate")).header("content-type", "application/json").body(big).send().expect("send");
    assert_eq!(resp.status(), 413);
    assert!(resp.json::<Value>().expect("json")["error"].is_string());
    let resp = s.get("/api/conversations/%FF%FE");
    assert!(resp.status().is_client_error());
    assert!(resp.json::<Value>().is_ok(), "a malformed path answers JSON");
    assert!(s.loaded().is_empty(), "nothing refused loaded a model");
}

/// A server on 127.0.0.2 that redirects every request to `target`.
fn redirector(target: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(conn, "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    addr
}

#[test]
fn pulls_asked_over_the_network_reach_only_allowed_addresses() {
    let files = crate::support::file_server::FileServer::start(crate::support::model_path(SMOL));
    let dir = crate::support::temp_dir("reach");
    let config = dir.join("hearth.yaml");
    // 127.0.0.2 stands for an allowed host; 127.0.0.1 (the file server) is not allowed.
    std::fs::write(&config, "pull:\n  allow: [127.0.0.2]\n").expect("write config");
    let models = dir.join("models");
    let s = Server::start_with(&["--config", config.to_str().expect("utf8"), "--models", models.to_str().expect("utf8")]);
    let direct = files.url("x.gguf");
    let by_name = direct.replace("127.0.0.1", "localhost");
    let via_redirect = format!("http://{}/x.gguf", redirector(direct.clone()));
    for (url, says) in [(direct.as_str(), "loopback"), (by_name.as_str(), "loopback"), (via_redirect.as_str(), "loopback"), ("http://169.254.169.254/latest/meta-data", "link-local"), ("http://[::ffff:10.0.0.1]/x.gguf", "private")] {
        let resp = s.post("/api/pull", &json!({"model": url, "as": "stolen", "stream": false}));
        assert!(resp.status().is_client_error() || resp.status().is_server_error(), "{url}: {}", resp.status());
        let v: Value = resp.json().expect("json");
        assert!(v["error"].as_str().is_some_and(|e| e.contains(says) && e.contains("pull.allow")), "{url}: {v}");
    }
    assert_eq!(files.sent.load(std::sync::atomic::Ordering::SeqCst), 0, "no byte came from the file server");
    let tags: Value = s.get("/api/tags").json().expect("tags");
    assert_eq!(tags["models"].as_array().map(Vec::len), Some(0), "{tags}");
}
