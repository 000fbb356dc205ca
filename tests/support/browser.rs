//! A real headless Chromium (Debian's `chromium`, installed by scripts/test.sh) driven through
//! the DevTools protocol over its WebSocket: navigate, evaluate JavaScript in the page, wait
//! for a condition, take screenshots, and collect what the page's console reported as errors.
//! One page per browser; the browser (and its profile directory) goes when dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

pub struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// Console errors, uncaught exceptions and failed loads, as text, in order.
    pub errors: Vec<String>,
    profile: PathBuf,
}

/// `HEARTH_TEST_CHROMIUM`, else `chromium` on the PATH.
fn chromium() -> String {
    std::env::var("HEARTH_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".to_string())
}

impl Browser {
    /// Starts Chromium with a fresh profile and attaches to its page.
    pub fn start() -> Browser {
        let profile = super::temp_dir("chromium");
        let mut child = Command::new(chromium())
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions"])
            .args(["--disable-background-networking", "--disable-component-update", "--remote-debugging-port=0", "--window-size=1280,860"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium must be installed (scripts/test.sh installs Debian's chromium)");
        // Chromium says where its DevTools listen on stderr; the rest is drained away.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let browser_url = rx.recv_timeout(Duration::from_secs(60)).expect("chromium did not open its DevTools port");
        let port: u16 = browser_url.trim_start_matches("ws://127.0.0.1:").split('/').next().and_then(|p| p.parse().ok()).expect("DevTools port");
        let pages: Value = reqwest::blocking::get(format!("http://127.0.0.1:{port}/json/list")).expect("targets").json().expect("json");
        let page = pages.as_array().expect("targets").iter().find(|t| t["type"] == "page").expect("a page target");
        let ws_url = page["webSocketDebuggerUrl"].as_str().expect("page url").to_string();
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect DevTools");
        stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).expect("DevTools WebSocket");
        let mut b = Browser { child, ws, next_id: 0, errors: Vec::new(), profile };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            b.call(domain, json!({}));
        }
        b
    }

    /// Sends one command and waits for its result; events read meanwhile are recorded.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws.send(Message::text(json!({"id": id, "method": method, "params": params}).to_string())).expect("send to DevTools");
        loop {
            let msg = self.ws.read().expect("read from DevTools");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.record(&v);
        }
    }

    fn record(&mut self, event: &Value) {
        let p = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.errors.push(format!("exception: {}", p["exceptionDetails"])),
            Some("Runtime.consoleAPICalled") if p["type"] == "error" => self.errors.push(format!("console.error: {}", p["args"])),
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => self.errors.push(format!("log: {} {}", p["entry"]["text"], p["entry"]["url"])),
            _ => {}
        }
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expression, "awaitPromise": true, "returnByValue": true}));
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy (60 s at most): the page's own pace decides.
    pub fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.eval(expression);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what} ({expression}); errors so far: {:?}", self.errors);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Opens `url` and waits until the document and its modules have loaded.
    pub fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for("the page to load", "document.readyState === 'complete'");
    }

    pub fn reload(&mut self) {
        self.call("Page.reload", json!({}));
        std::thread::sleep(Duration::from_millis(200));
        self.wait_for("the page to load again", "document.readyState === 'complete'");
    }

    /// A PNG of the page as shown, written to `dir/name.png` when `dir` is given.
    pub fn screenshot(&mut self, dir: Option<&Path>, name: &str) {
        let Some(dir) = dir else { return };
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().expect("png")).expect("base64");
        std::fs::create_dir_all(dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
