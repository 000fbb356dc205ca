"""A loaded model's resident memory: hearth next to llama-server at the same context and slots.

Called by benches/memory.sh. For each model, starts `hearth serve` at its defaults (context
4096, 4 slots) and `llama-server -c 4096 -np 4 --kv-unified` (the same pool of 4096 KV cells),
sends each the same short greedy generation (so the weights are touched) and a ~600-token one
(so the KV cells in use are touched), and reads each process's VmRSS. hearth's figure includes
its HTTP server, response cache and everything else in the process; llama-server's likewise.
"""
import argparse
import json
import re
import subprocess
import time
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--server", required=True)
ap.add_argument("--hearth", required=True)
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--models-dir", required=True)
ap.add_argument("models", nargs="+")
args = ap.parse_args()

LONG = " ".join(f"item {i} is a number." for i in range(75))


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))


def wait_up(url):
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} never answered")


print(f"{'model':<14} {'hearth MiB':>11} {'llama-server MiB':>17} {'ratio':>7}")
for name in args.models:
    path = f"{args.models_dir}/{name}.gguf"
    h = subprocess.Popen([args.hearth, "serve", "--port", "0", "--threads", str(args.threads)],
                         stderr=subprocess.PIPE, text=True)
    addr = next(m.group(1) for line in h.stderr if (m := re.search(r"listening on (\S+)", line)))
    for prompt in ["Hello", LONG]:
        post(f"http://{addr}/api/generate", {"model": name, "prompt": prompt, "raw": True, "stream": False,
                                            "options": {"num_predict": 16, "temperature": 0}})
    hearth_rss = rss_mib(h.pid)
    h.kill()
    h.wait()
    s = subprocess.Popen([args.server, "-m", path, "-c", "4096", "-np", "4", "--kv-unified", "-t", str(args.threads),
                          "--host", "127.0.0.1", "--port", "18391"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_up("http://127.0.0.1:18391/health")
    for prompt in ["Hello", LONG]:
        post("http://127.0.0.1:18391/completion", {"prompt": prompt, "n_predict": 16, "temperature": 0})
    server_rss = rss_mib(s.pid)
    s.kill()
    s.wait()
    print(f"{name:<14} {hearth_rss:>11.0f} {server_rss:>17.0f} {hearth_rss / server_rss:>6.2f}x")
