"""The security issue's measurements, against the real server on loopback (each server started
here on a free port and ended here, by its own handle):

  auth     per-key overhead: cache-hit latency at a fixed rate (hey -q), a server with API keys
           next to one without, alternating, same run;
  hangup   time from a client's hang-up to an idle CPU: while its prompt is read (prefill), and a
           storm of 200 clients hanging up after 50 ms; plus whether a newcomer got 503;
  rss      resident memory under 64 streaming clients for a few minutes.

  python3 benches/hostile.py [auth] [hangup] [rss]    (default: all three)
  HEARTH=target/debug/hearth MODEL=smollm2:135m MINUTES=3 python3 benches/hostile.py rss
"""
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HEARTH = os.environ.get("HEARTH", "target/debug/hearth")
MODEL = os.environ.get("MODEL", "smollm2:135m")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(config="", *flags):
    port = free_port()
    conf = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    conf.write(config)
    conf.close()
    env = dict(os.environ, HEARTH_DATA=tempfile.mkdtemp(prefix="hearth-hostile-"))
    proc = subprocess.Popen([HEARTH, "serve", "--port", str(port), "--config", conf.name, *flags],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, port
        except Exception:
            time.sleep(0.2)
    proc.kill()
    sys.exit("server not ready")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def post(port, body, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/generate", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read()


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hey(port, body, key, rate=2000, seconds=10, workers=8):
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(workers), "-q", str(rate // workers), "-m", "POST",
           "-T", "application/json", "-d", json.dumps(body)]
    if key:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}/api/generate"], capture_output=True, text=True).stdout
    pct = {p: float(s) * 1000 for p, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", out)}
    statuses = re.findall(r"\[(\d+)\]\s+(\d+) responses", out)
    return pct, statuses


def auth():
    key = "hth_" + "ab" * 32
    digest = hashlib.sha256(key.encode()).hexdigest()
    keyed = f"auth:\n  keys:\n    - name: bench\n      sha256: {digest}\n      scopes: [generate]\n      rpm: 100000000\n      tpm: 100000000000\n"
    body = {"model": MODEL, "prompt": "Name a colour.", "stream": False, "options": {"temperature": 0, "num_predict": 8}}
    plain, p_port = start()
    guarded, g_port = start(keyed)
    try:
        post(p_port, body)
        post(g_port, body, key)
        rows = []
        for rep in range(2):
            for name, port, k in (("no keys", p_port, None), ("with a key", g_port, key)):
                pct, statuses = hey(port, body, k)
                rows.append((name, rep, pct.get("50"), pct.get("99"), statuses))
        print("cache hits at 2000 req/s, 8 workers, 10 s each (ms):")
        for name, rep, p50, p99, statuses in rows:
            print(f"  {name:<11} run {rep + 1}: p50 {p50:.2f}  p99 {p99:.2f}  statuses {statuses}")
    finally:
        stop(plain)
        stop(guarded)


def idle_after(pid, since, settle=0.5, limit=60):
    """Seconds from `since` to the last time the process's CPU time grew before it stayed flat
    for `settle` seconds (sampled every 5 ms; the kernel counts in 10 ms ticks)."""
    last_change, last = since, cpu_seconds(pid)
    while time.time() - since < limit:
        time.sleep(0.005)
        now, c = time.time(), cpu_seconds(pid)
        if c > last:
            last_change, last = now, c
        elif now - last_change >= settle:
            return max(0.0, last_change - since)
    return None


def open_stream(port, body):
    """Sends a streaming request on a raw socket and waits for its response head (admitted)."""
    s = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def hangup():
    proc, port = start("", "--parallel", "1", "--context-length", "2048")
    pid = proc.pid
    try:
        post(port, {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1}})
        prompt = " ".join(f"w{i % 97}" for i in range(600))
        body = {"model": MODEL, "prompt": prompt, "options": {"num_predict": 500}}
        for rep in range(3):
            s = open_stream(port, body)
            s.recv(1)  # the response head: admitted, reading its prompt
            time.sleep(0.3)
            closed = time.time()
            s.close()
            t = idle_after(pid, closed)
            print(f"prefill, run {rep + 1}: hang-up to idle {t * 1000:.0f} ms" if t is not None else "prefill: never idle")
            time.sleep(0.5)
        # The storm: 200 clients that hang up after 50 ms.
        socks = [open_stream(port, body) for _ in range(200)]
        time.sleep(0.05)
        closed = time.time()
        for s in socks:
            s.close()
        t = idle_after(pid, closed)
        try:
            post(port, {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1}})
            newcomer = "200"
        except urllib.error.HTTPError as e:
            newcomer = str(e.code)
        print(f"storm of 200 hang-ups after 50 ms: hang-up to idle {t * 1000:.0f} ms; a newcomer then got {newcomer}" if t is not None else "storm: never idle")
    finally:
        stop(proc)


def rss():
    minutes = float(os.environ.get("MINUTES", "3"))
    proc, port = start("cache:\n  enabled: false\n", "--max-queue", "64")
    pid = proc.pid
    done = time.time() + minutes * 60
    counts = {"ok": 0, "err": 0}

    def client(i):
        n = 0
        while time.time() < done:
            n += 1
            body = {"model": MODEL, "prompt": f"Client {i} request {n}: tell me something.", "options": {"num_predict": 48}}
            try:
                post(port, body)
                counts["ok"] += 1
            except Exception:
                counts["err"] += 1
                time.sleep(0.2)

    try:
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(64)]
        for t in threads:
            t.start()
        start_at = time.time()
        samples = []
        while time.time() < done:
            samples.append((time.time() - start_at, rss_mib(pid)))
            time.sleep(10)
        for t in threads:
            t.join(timeout=120)
        print(f"64 streaming clients, {minutes:g} min: {counts['ok']} answers, {counts['err']} errors; RSS (MiB) every 10 s:")
        print("  " + " ".join(f"{m:.0f}" for _, m in samples))
    finally:
        stop(proc)


if __name__ == "__main__":
    wanted = sys.argv[1:] or ["auth", "hangup", "rss"]
    for name in wanted:
        {"auth": auth, "hangup": hangup, "rss": rss}[name]()
