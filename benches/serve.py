"""The measuring half of benches/serve.sh (see its header). Starts and stops its own servers on
free loopback ports, ending only the processes it started.

`--hearth` may be given several times as LABEL=PATH (the portable build next to a native one):
each repetition then serves with every build in turn; the second-turn and cache-hit measurements
use the first."""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--server", required=True, help="llama-server")
ap.add_argument("--hearth", required=True, action="append", help="PATH or LABEL=PATH; repeatable")
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--clients", type=int, default=8)
ap.add_argument("--requests", type=int, default=32)
ap.add_argument("--predict", type=int, default=64)
ap.add_argument("--reps", type=int, default=2)
ap.add_argument("--rate", type=int, default=2000)
ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
ap.add_argument("--models-dir", required=True)
ap.add_argument("models", nargs="+")
args = ap.parse_args()
HEARTHS = dict(h.split("=", 1) if "=" in h else ("hearth", h) for h in args.hearth)
FIRST = next(iter(HEARTHS.values()))


LOGS = tempfile.mkdtemp(prefix="hearth-serve-bench-")


def log_file(name):
    """The server's stderr, kept for when something fails."""
    return open(os.path.join(LOGS, f"{name}-{time.time():.0f}.log"), "w")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited early: {proc.args}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    proc.terminate()
    sys.exit(f"server not ready: {url}")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_llama_server(model_file):
    port = free_port()
    proc = subprocess.Popen([args.server, "-m", model_file, "-t", str(args.threads), "-np", str(args.clients),
                             "-c", str(args.clients * args.ctx), "--host", "127.0.0.1", "--port", str(port),
                             "--no-webui"], stdout=subprocess.DEVNULL, stderr=log_file("llama-server"))
    wait_ready(f"http://127.0.0.1:{port}/health", proc)
    return proc, port


def start_hearth(cache=False, convert="none", binary=FIRST):
    port = free_port()
    conf = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    conf.write(f"cache:\n  enabled: {'true' if cache else 'false'}\n")
    conf.close()
    env = dict(os.environ, HEARTH_MODELS=args.models_dir, HEARTH_DATA=tempfile.mkdtemp(prefix="hearth-bench-"))
    proc = subprocess.Popen([binary, "serve", "--port", str(port), "--config", conf.name, "--parallel", str(args.clients),
                             "--threads", str(args.threads), "--context-length", str(args.ctx),
                             "--convert-weights", convert],
                            env=env, stdout=subprocess.DEVNULL, stderr=log_file("hearth"))
    wait_ready(f"http://127.0.0.1:{port}/health", proc)
    return proc, port


def bench(model, port, pid):
    out = subprocess.run([FIRST, "bench", model, "--url", f"http://127.0.0.1:{port}", "--api", "openai",
                          "--pid", str(pid), "--concurrency", str(args.clients), "--requests", str(args.requests),
                          "--num-predict", str(args.predict), "--runs", "1", "--json"],
                         capture_output=True, text=True, env=dict(os.environ, HEARTH_MODELS=args.models_dir))
    if out.returncode != 0:
        sys.exit(f"hearth bench failed: {out.stderr} (server logs in {LOGS})")
    report = json.loads(out.stdout)
    level = report["concurrency"][0]
    if level["errors"]:
        sys.exit(f"bench errors: {level['first_error']} (server logs in {LOGS})")
    return level["tokens_per_second"], report.get("peak_rss_bytes")


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def second_turn(model, port):
    """A chat whose history is ~1k tokens, then its follow-up: prompt time of each turn."""
    history = []
    for i in range(12):
        history.append({"role": "user", "content": f"Note {i}: " + " ".join(f"the {w} item is number {i * 7 + w}." for w in range(10))})
        history.append({"role": "assistant", "content": f"Noted, item group {i}."})
    first_msgs = history + [{"role": "user", "content": "Which note mentions number 42?"}]
    opts = {"temperature": 0, "num_predict": 16, "num_ctx": args.ctx}
    r1 = post(port, "/api/chat", {"model": model, "messages": first_msgs, "stream": False, "options": opts, "use_cache": False})
    second_msgs = first_msgs + [r1["message"], {"role": "user", "content": "And which mentions number 43?"}]
    r2 = post(port, "/api/chat", {"model": model, "messages": second_msgs, "stream": False, "options": opts, "use_cache": False})
    return r1, r2


def cache_hits(model, port):
    body = {"model": model, "prompt": "Name a colour.", "stream": False, "options": {"temperature": 0, "num_predict": 8}}
    post(port, "/api/generate", body)
    workers = 8
    out = subprocess.run(["hey", "-z", "10s", "-c", str(workers), "-q", str(max(1, args.rate // workers)), "-m", "POST",
                          "-T", "application/json", "-d", json.dumps(body), f"http://127.0.0.1:{port}/api/generate"],
                         capture_output=True, text=True)
    text = out.stdout
    pct = {p: float(s) * 1000 for p, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", text)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    statuses = re.findall(r"\[(\d+)\]\s+(\d+) responses", text)
    return pct, rps, statuses


for model in args.models:
    model_file = os.path.join(args.models_dir, f"{model}.gguf")
    # Per repetition, in turn: llama-server, then each hearth build as the file stores the weights
    # and with --convert-weights q8_0 (llama-server gets the file as it is in every comparison).
    runs = [("peer", None, None)] + [(f"{label} {conv}", path, conv) for label, path in HEARTHS.items() for conv in ("none", "q8_0")]
    tps = {name: [] for name, _, _ in runs}
    rss = {}
    for rep in range(args.reps):
        for name, binary, convert in runs:
            proc, port = start_llama_server(model_file) if binary is None else start_hearth(convert=convert, binary=binary)
            try:
                rate, rss[name] = bench(model, port, proc.pid)
                tps[name].append(rate)
            finally:
                stop(proc)
    p = statistics.median(tps["peer"])
    print(f"{model}: {args.clients} clients x {args.predict} tokens: llama-server -np {args.clients} {p:.1f} tok/s "
          f"(peak RSS {(rss['peer'] or 0) >> 20} MiB)  [runs: {', '.join(f'{x:.1f}' for x in tps['peer'])}]")
    for name, _, _ in runs[1:]:
        o = statistics.median(tps[name])
        label, convert = name.rsplit(" ", 1)
        print(f"{model}:   {label} --convert-weights {convert}: {o:.1f} tok/s (peak RSS {(rss[name] or 0) >> 20} MiB): "
              f"ratio {o / p:.2f}x  [runs: {', '.join(f'{x:.1f}' for x in tps[name])}]")

    proc, port = start_hearth(cache=False)
    try:
        r1, r2 = second_turn(model, port)
    finally:
        stop(proc)
    t1, t2 = r1["prompt_eval_duration"], r2["prompt_eval_duration"]
    print(f"{model}: second chat turn: prompt {r2['prompt_eval_count']} tokens in {t2 / 1e6:.1f} ms vs first turn "
          f"{r1['prompt_eval_count']} tokens in {t1 / 1e6:.1f} ms: ratio {t2 / t1:.3f}x")

proc, port = start_hearth(cache=True)
try:
    pct, rps, statuses = cache_hits(args.models[0], port)
finally:
    stop(proc)
print(f"cache hits at {args.rate} req/s asked ({rps:.0f} req/s done, statuses {statuses}): "
      f"p50 {pct.get('50', float('nan')):.2f} ms, p90 {pct.get('90', float('nan')):.2f} ms, p99 {pct.get('99', float('nan')):.2f} ms")
