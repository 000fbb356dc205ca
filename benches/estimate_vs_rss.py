"""How close hearth's RAM estimate is to the real RSS growth of loading a model.

For each test model and num_ctx, starts `hearth serve` (4 slots), reads its RSS, loads the model
with one short generation (so the weights are touched), reads RSS again, and prints the growth
next to `/api/show`'s `ram_estimate`. Run from the repository root after `cargo build`:

    python3 benches/estimate_vs_rss.py
"""
import json
import re
import subprocess
import urllib.request


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024


def post(addr, path, body):
    req = urllib.request.Request(f"http://{addr}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))


print(f"{'model':<14} {'num_ctx':>7} {'estimate MiB':>13} {'RSS growth MiB':>15} {'error':>7}")
for model in ["smollm2:135m", "gemma3:270m"]:
    for ctx in [2048, 4096, 8192]:
        p = subprocess.Popen(["target/debug/hearth", "serve", "--port", "0", "--context-length", str(ctx),
                              "--parallel", "4"], stderr=subprocess.PIPE, text=True)
        addr = None
        for line in p.stderr:
            m = re.search(r"listening on (\S+)", line)
            if m:
                addr = m.group(1)
                break
        est = post(addr, "/api/show", {"model": model})["ram_estimate"]["total"] / 2**20
        base = rss_mib(p.pid)
        post(addr, "/api/generate", {"model": model, "prompt": "Tell me a story.", "stream": False,
                                     "options": {"num_predict": 16}})
        grown = rss_mib(p.pid) - base
        print(f"{model:<14} {ctx:>7} {est:>13.0f} {grown:>15.0f} {100 * (est - grown) / grown:>6.1f}%")
        p.kill()
        p.wait()
