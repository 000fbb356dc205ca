"""A fleet's second turn: three `hearth serve` nodes and fronts on loopback: one front
routing `cache_aware`, one `round_robin`, and, when `redis-server` is installed, two
`cache_aware` fronts sharing one Redis, each conversation's second turn going through the
other front. Each arm carries the same number of two-turn conversations, each opening with its
own ~1.5k-token document. Prints each arm's second-turn prompt time as a share of the first
turn's (the nodes' own prompt_eval_duration, passed through the front), and how often the
second turn reached the node that served the first. The targets: cache_aware <= 0.1x,
round_robin >= 0.5x.

    python3 benches/fleet.py [--hearth target/release/hearth] [--port 11620] [--conversations 6] [MODEL]
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, tempfile, time, urllib.request

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
    arms = [("cache_aware", "cache_aware", 1, ""), ("round_robin", "round_robin", 1, "")]
    if shutil.which("redis-server"):
        redis_port = args.port + 9
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", redis_port)).close()
                break
            except OSError:
                time.sleep(0.1)
        arms.append(("cache_aware, 2 fronts on one Redis", "cache_aware", 2, f"cache:\n  redis_url: redis://127.0.0.1:{redis_port}\n"))
    fronts = {}
    port = args.port + 10
    for name, policy, count, extra in arms:
        config = os.path.join(tempfile.mkdtemp(prefix="hearth-fleet-front-"), "hearth.yaml")
        with open(config, "w") as f:
            f.write("providers:\n  fleet:\n    kind: hearth\n    nodes: [%s]\n    policy: %s\n%s"
                    % (", ".join(f"http://127.0.0.1:{p}" for p in nodes), policy, extra))
        fronts[name] = list(range(port, port + count))
        for p in fronts[name]:
            start(p, ["--config", config])
        port += count
    for policy, ports in fronts.items():
        ratios, same = [], 0
        if len(ports) > 1:
            # Fronts break ties between equal nodes in turn: one request puts them out of
            # step, so only the shared owners can bring a second turn to the first's node.
            chat(ports[-1], [{"role": "user", "content": "Out of step."}])
        for c in range(args.conversations):
            doc = " ".join(f"Note {policy} {c}.{i}: crate {i} holds {i * 7 + c} bolts and sits in aisle {i % 9}." for i in range(80))
            msgs = [{"role": "user", "content": doc + " How many bolts are in crate 12?"}]
            a, ta = chat(ports[0], msgs)
            msgs += [a["message"], {"role": "user", "content": "And in crate 13?"}]
            b, tb = chat(ports[-1], msgs)
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
