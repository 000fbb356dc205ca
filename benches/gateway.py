"""Gateway overhead: the latency a route adds in front of a fast upstream. A second hearth
answers from its response cache; the same request is sent to it directly, through a front
hearth's route (fallback to that provider), and to the provider's model by name, each at a
fixed rate with `hey`, alternating, in one run. The front's own cache is off, so every request
through it goes to the upstream.

  python3 benches/gateway.py                (1000 req/s, 4 workers, 15 s per run, 2 rounds)
  (more workers measure hey more than the servers: on 2 vCPUs, 20 workers alone add 2 ms at p50)
  RATE=1000 SECONDS=15 ROUNDS=2 WORKERS=4 HEARTH=target/debug/hearth python3 benches/gateway.py
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from hostile import MODEL, hey, post, start, stop  # noqa: E402

RATE = int(os.environ.get("RATE", "1000"))
SECONDS = int(os.environ.get("SECONDS", "15"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
WORKERS = int(os.environ.get("WORKERS", "4"))


def main():
    upstream, u_port = start()
    config = (f"cache:\n  enabled: false\nproviders:\n  up:\n    kind: ollama\n    url: http://127.0.0.1:{u_port}\n    models: [{json.dumps(MODEL)}]\n"
              f"routes:\n  gw:\n    strategy: fallback\n    targets:\n      - model: up/{MODEL}\n")
    front, f_port = start(config)
    body = {"model": MODEL, "prompt": "Name a colour.", "stream": False, "options": {"temperature": 0, "num_predict": 8}}
    cases = [("upstream directly", u_port, MODEL), ("front, route gw", f_port, "gw"), ("front, up/model", f_port, f"up/{MODEL}")]
    try:
        post(u_port, body)
        rows = []
        for rep in range(ROUNDS):
            for name, port, model in cases:
                pct, statuses = hey(port, dict(body, model=model), None, rate=RATE, seconds=SECONDS, workers=WORKERS)
                rows.append((name, rep, pct.get("50"), pct.get("90"), pct.get("99"), statuses))
        print(f"cache hits on the upstream at {RATE} req/s, {WORKERS} workers, {SECONDS} s per run (ms):")
        for name, rep, p50, p90, p99, statuses in rows:
            print(f"  {name:<18} run {rep + 1}: p50 {p50:.2f}  p90 {p90:.2f}  p99 {p99:.2f}  statuses {statuses}")
        for rep in range(ROUNDS):
            direct = next(r for r in rows if r[0] == cases[0][0] and r[1] == rep)
            routed = next(r for r in rows if r[0] == cases[1][0] and r[1] == rep)
            print(f"  round {rep + 1}: the route adds {routed[2] - direct[2]:.2f} ms at p50, {routed[4] - direct[4]:.2f} ms at p99")
    finally:
        stop(front)
        stop(upstream)


if __name__ == "__main__":
    main()
