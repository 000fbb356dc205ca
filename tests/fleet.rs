//! A fleet of real `hearth serve` nodes behind a front (`kind: hearth`) on loopback: a
//! conversation that keeps its node while it lives and moves, whole, to another when that
//! node is killed with SIGKILL, with no request failing that had not started streaming;
//! round-robin spreading requests, a node that joins taking traffic, and cache-aware keeping
//! each conversation on one node, also across two fronts sharing Redis.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{temp_dir, Redis, Server, SMOL};

fn front(nodes: &[String], policy: &str) -> Server {
    front_with(nodes, policy, "")
}

/// A front over `nodes`, with `extra` config lines.
fn front_with(nodes: &[String], policy: &str, extra: &str) -> Server {
    let list = nodes.iter().map(|n| format!("http://{n}")).collect::<Vec<_>>().join(", ");
    let config = temp_dir("fleet").join("hearth.yaml");
    let text = format!("providers:\n  fleet:\n    kind: hearth\n    nodes: [{list}]\n    policy: {policy}\n    health_check: 1s\n{extra}");
    std::fs::write(&config, text).expect("write config");
    let s = Server::start_with(&["--config", config.to_str().expect("path")]);
    wait_for(&s, "fleet/smollm2:135m listed", |s| {
        let tags: Value = s.get("/api/tags").json().expect("tags");
        tags["models"].as_array().expect("models").iter().any(|m| m["name"] == "fleet/smollm2:135m")
    });
    s
}

fn wait_for(s: &Server, what: &str, ready: impl Fn(&Server) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(s) {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The fleet's nodes as `/api/routes` shows them: URL -> up.
fn nodes_up(s: &Server) -> Vec<(String, bool)> {
    let routes: Value = s.get("/api/routes").json().expect("routes");
    let fleet = routes["providers"].as_array().expect("providers").iter().find(|p| p["name"] == "fleet").expect("fleet listed");
    assert_eq!(fleet["kind"], "hearth");
    fleet["fleet"]["nodes"].as_array().expect("nodes").iter().map(|n| (n["url"].as_str().expect("url").to_string(), n["up"] == true)).collect()
}

fn target_of(resp: &reqwest::blocking::Response) -> String {
    resp.headers().get("x-hearth-target").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// One short answer through the front; (the node's URL it names, the answer).
fn ask(s: &Server, body: Value) -> (String, Value) {
    let resp = s.post("/api/chat", &body);
    assert_eq!(resp.status(), 200, "{:?}", resp.text());
    let target = target_of(&resp);
    let v: Value = resp.json().expect("json");
    assert_eq!(v["done"], true, "{v}");
    let node = target.strip_prefix("fleet@").and_then(|t| t.strip_suffix(&format!("/{SMOL}"))).unwrap_or_else(|| panic!("target {target:?} names no node")).to_string();
    (node, v)
}

fn say(text: &str) -> Value {
    json!({"model": "fleet/smollm2:135m", "messages": [{"role": "user", "content": text}], "stream": false, "options": {"num_predict": 4, "temperature": 0}})
}

#[test]
fn a_conversation_moves_whole_to_another_node_when_its_node_is_killed() {
    let mut nodes: Vec<Server> = (0..3).map(|_| Server::start()).collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let s = front(&urls, "cache_aware");

    // Streams in the background while the node dies: each must finish, or have started
    // streaming before it broke off.
    let stop = Arc::new(AtomicBool::new(false));
    let failed_early = Arc::new(Mutex::new(Vec::<String>::new()));
    let broke_midway = Arc::new(Mutex::new(0usize));
    let load: Vec<_> = (0..2)
        .map(|i| {
            let (stop, failed_early, broke_midway) = (stop.clone(), failed_early.clone(), broke_midway.clone());
            let (client, url) = (s.client.clone(), s.url("/api/chat"));
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    let body = json!({"model": "fleet/smollm2:135m", "messages": [{"role": "user", "content": format!("Background request {i}-{n}: name a color.")}], "options": {"num_predict": 24}});
                    let resp = match client.post(&url).json(&body).send() {
                        Ok(r) if r.status() == 200 => r,
                        Ok(r) => {
                            failed_early.lock().expect("lock").push(format!("HTTP {}: {:?}", r.status(), r.text()));
                            continue;
                        }
                        Err(e) => {
                            failed_early.lock().expect("lock").push(e.to_string());
                            continue;
                        }
                    };
                    let (mut streamed, mut done) = (0, false);
                    for line in std::io::BufReader::new(resp).lines().map_while(Result::ok) {
                        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                        if v["done"] == true {
                            done = true;
                        } else if v.get("error").is_none() {
                            streamed += 1;
                        }
                    }
                    match (done, streamed) {
                        (true, _) => {}
                        (false, 0) => failed_early.lock().expect("lock").push(format!("request {i}-{n} ended before streaming")),
                        (false, _) => *broke_midway.lock().expect("lock") += 1,
                    }
                }
            })
        })
        .collect();

    let conversation = |text: &str| {
        let mut body = say(text);
        body["conversation_id"] = json!("fleet-chat");
        ask(&s, body)
    };
    let mut served = Vec::new();
    let mut prompt_tokens = Vec::new();
    for turn in 1..=10 {
        let (node, v) = conversation(&format!("Turn {turn}: tell me one more fact."));
        served.push(node);
        prompt_tokens.push(v["prompt_eval_count"].as_u64().expect("prompt_eval_count"));
        if turn == 4 {
            // The node holding the conversation dies.
            let at = urls.iter().position(|u| served[3] == format!("http://{u}")).expect("a node of ours");
            nodes[at].kill();
        }
    }
    stop.store(true, Ordering::Release);
    for t in load {
        t.join().expect("load thread");
    }

    // Cache-aware: one node while it lived, then one other node for the rest.
    assert!(served[..4].iter().all(|n| *n == served[0]), "{served:?}");
    assert!(served[4..].iter().all(|n| *n == served[4]) && served[4] != served[0], "{served:?}");
    // Each turn sent the whole history: the prompt grew at every turn, the move included.
    assert!(prompt_tokens.windows(2).all(|w| w[1] > w[0]), "{prompt_tokens:?}");
    let c: Value = s.get("/api/conversations/fleet-chat").json().expect("conversation");
    assert_eq!(c["messages"].as_array().expect("messages").len(), 20, "{c}");
    let early = failed_early.lock().expect("lock");
    assert!(early.is_empty(), "requests failed before streaming: {early:?}");
    eprintln!("background streams broken midway by the kill: {}", broke_midway.lock().expect("lock"));

    // The dead node is shown down; its breaker opened or its check failed.
    wait_for(&s, "the killed node shown down", |s| nodes_up(s).iter().any(|(u, up)| *u == served[0] && !up));
}

#[test]
fn round_robin_spreads_requests_a_node_that_joins_takes_traffic_and_cache_aware_keeps_a_conversation() {
    let a = Server::start();
    let b = Server::start();
    // The third node's port, free until it starts.
    let late_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let late = format!("127.0.0.1:{late_port}");
    let urls = vec![a.addr.clone(), b.addr.clone(), late.clone()];
    let s = front(&urls, "round_robin");
    wait_for(&s, "the absent node shown down", |s| nodes_up(s).contains(&(format!("http://{late}"), false)));

    // Round-robin over the two nodes that are up: each takes every other request.
    // Each prompt new: a repeated one would be answered from the response cache.
    let spread = |label: &str, count: usize| {
        let mut seen: Vec<String> = (0..count).map(|i| ask(&s, say(&format!("{label} request {i}."))).0).collect();
        seen.sort();
        seen
    };
    let two = spread("First", 4);
    let (ua, ub) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let mut expected = vec![ua.clone(), ua.clone(), ub.clone(), ub.clone()];
    expected.sort();
    assert_eq!(two, expected);

    // The third node starts: from its first good check on, it takes its turn.
    let _c = Server::start_with(&["--port", &late_port.to_string()]);
    wait_for(&s, "the new node shown up", |s| nodes_up(s).contains(&(format!("http://{late}"), true)));
    let mut expected = vec![ua, ub, format!("http://{late}")];
    expected.sort();
    assert_eq!(spread("Second", 3), expected);

    // A conversation's turns through round-robin land on different nodes; through a
    // cache-aware front on the same nodes, on one.
    let chat = |s: &Server, id: &str, turn: usize| {
        let mut body = say(&format!("Turn {turn} of {id}."));
        body["conversation_id"] = json!(id);
        ask(s, body).0
    };
    let rr: Vec<String> = (1..=3).map(|t| chat(&s, "spread", t)).collect();
    assert!(rr[0] != rr[1] && rr[1] != rr[2] && rr[0] != rr[2], "{rr:?}");
    let aware = front(&urls, "cache_aware");
    let kept: Vec<String> = (1..=3).map(|t| chat(&aware, "kept", t)).collect();
    assert!(kept.iter().all(|n| *n == kept[0]), "{kept:?}");
    let routes: Value = aware.get("/api/routes").json().expect("routes");
    let fleet = routes["providers"].as_array().expect("providers").iter().find(|p| p["name"] == "fleet").expect("fleet");
    assert_eq!(fleet["fleet"]["policy"], "cache_aware", "{fleet}");
}

#[test]
fn a_host_name_with_several_addresses_is_one_node_per_address() {
    let node = Server::start();
    let port = node.port();
    let config = temp_dir("fleet-dns").join("hearth.yaml");
    std::fs::write(&config, format!("providers:\n  fleet:\n    kind: hearth\n    nodes: [http://localhost:{port}]\n    policy: round_robin\n    health_check: 1s\n")).expect("write config");
    let s = Server::start_with(&["--config", config.to_str().expect("path")]);
    // What this machine's resolver says `localhost` is (often 127.0.0.1 and ::1).
    let mut addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port)).expect("resolve localhost").collect();
    addrs.sort();
    addrs.dedup();
    let expected: Vec<String> = if addrs.len() > 1 { addrs.iter().map(|a| format!("http://{a}")).collect() } else { vec![format!("http://localhost:{port}")] };
    wait_for(&s, "the nodes looked up", |s| {
        let mut urls: Vec<String> = nodes_up(s).into_iter().map(|(u, _)| u).collect();
        urls.sort();
        urls == expected
    });
    // The node listens on 127.0.0.1 only: an IPv6 address of the name is down, and every
    // request is answered by the IPv4 one.
    let v4 = expected.iter().find(|u| u.contains("127.0.0.1") || u.contains("localhost")).expect("an IPv4 node").clone();
    wait_for(&s, "only the IPv4 address up", |s| nodes_up(s).iter().all(|(u, up)| *up == (*u == v4)));
    for i in 0..3 {
        assert_eq!(ask(&s, say(&format!("Name {i}."))).0, v4);
    }
}

#[test]
fn cache_aware_fronts_sharing_redis_send_a_conversation_to_one_node_whichever_front_it_reaches() {
    let nodes: Vec<Server> = (0..3).map(|_| Server::start()).collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let redis = Redis::start(None);
    let shared = format!("cache:\n  redis_url: {}\n", redis.url());
    let fronts = [front_with(&urls, "cache_aware", &shared), front_with(&urls, "cache_aware", &shared)];
    let routes: Value = fronts[0].get("/api/routes").json().expect("routes");
    let fleet = routes["providers"].as_array().expect("providers").iter().find(|p| p["name"] == "fleet").expect("fleet");
    assert_eq!(fleet["fleet"]["prefix_owners"], "redis", "{fleet}");

    // The fronts break ties between equal nodes in turn; one request through the second
    // puts their turns out of step, so without the shared owners they would pick apart.
    ask(&fronts[1], say("Out of step."));
    // Four conversations kept by their client, each turn through the other front.
    for c in 0..4 {
        let mut messages: Vec<Value> = Vec::new();
        let mut served = Vec::new();
        for t in 0..4 {
            messages.push(json!({"role": "user", "content": format!("Conversation {c}, turn {t}.")}));
            let mut body = say("");
            body["messages"] = json!(messages);
            body["use_cache"] = json!(false);
            let (node, answer) = ask(&fronts[t % 2], body);
            messages.push(answer["message"].clone());
            served.push(node);
        }
        assert!(served.iter().all(|n| *n == served[0]), "conversation {c} moved between nodes: {served:?}");
    }
}
