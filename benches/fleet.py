"""A fleet's second turn: three `hearth serve` nodes and two fronts on loopback, one front
routing `cache_aware`, the other `round_robin`. Each front carries the same number of
two-turn conversations, each opening with its own ~1.5k-token document. Prints each policy's
second-turn prompt time as a share of the first turn's (the nodes' own prompt_eval_duration,
passed through the front), and how often the second turn reached the node that served the
first. The targets: cache_aware <= 0.1x, round_robin >= 0.5x.

    python3 benches/fleet.py [--hearth target/release/hearth] [--port 11620] [--conversations 6] [MODEL]
"""
import argparse, json, os, signal, statistics, subprocess, tempfile, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--hearth", default="target/release/hearth")
ap.add_argument("--port", type=int, default=11620)
ap.add_argument("--conversations", type=int, default=6)
ap.add_argument("model", nargs="?", default="smollm2:135m")
args = ap.parse_args()
procs = []


def start(port, extra=(), env=None):
    p = subprocess.Popen([args.hearth, "serve", "--port", str(port), *extra],
                         env={**os.environ, "HEARTH_DATA": tempfile.mkdtemp(prefix="hearth-fleet-"), **(env or {})},
                         stderr=subprocess.DEVNULL)
    procs.append(p)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version")
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"hearth serve on {port} did not start")


def chat(port, msgs):
    body = {"model": f"fleet/{args.model}", "messages": msgs, "stream": False, "options": {"temperature": 0, "num_predict": 16}}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/chat", json.dumps(body).encode(), {"content-type": "application/json"})
    resp = urllib.request.urlopen(req)
    return json.load(resp), resp.headers.get("x-hearth-target")


try:
    nodes = [args.port + i for i in (1, 2, 3)]
    for port in nodes:
        start(port)
    fronts = {}
    for i, policy in enumerate(["cache_aware", "round_robin"]):
        config = os.path.join(tempfile.mkdtemp(prefix="hearth-fleet-front-"), "hearth.yaml")
        with open(config, "w") as f:
            f.write("providers:\n  fleet:\n    kind: hearth\n    nodes: [%s]\n    policy: %s\n"
                    % (", ".join(f"http://127.0.0.1:{p}" for p in nodes), policy))
        fronts[policy] = args.port + 10 + i
        start(fronts[policy], ["--config", config])
    for policy, port in fronts.items():
        ratios, same = [], 0
        for c in range(args.conversations):
            doc = " ".join(f"Note {policy} {c}.{i}: crate {i} holds {i * 7 + c} bolts and sits in aisle {i % 9}." for i in range(80))
            msgs = [{"role": "user", "content": doc + " How many bolts are in crate 12?"}]
            a, ta = chat(port, msgs)
            msgs += [a["message"], {"role": "user", "content": "And in crate 13?"}]
            b, tb = chat(port, msgs)
            ratios.append(b["prompt_eval_duration"] / a["prompt_eval_duration"])
            same += ta == tb
        print(f"{policy}: {args.conversations} conversations, first turn {a['prompt_eval_count']} tokens; "
              f"second turn on the first turn's node {same}/{args.conversations}; "
              f"second/first prompt time median {statistics.median(ratios):.3f}x (min {min(ratios):.3f}, max {max(ratios):.3f})")
finally:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait()
