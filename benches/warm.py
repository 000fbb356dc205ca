"""Warm after a restart: a ~2k-token first turn on a fresh `hearth serve` (its own data
directory), SIGTERM, a new server on the same data directory, and the conversation's second
turn. Prints both turns' prompt_eval_duration (hearth's time from a request's arrival at the
model to its first token, so a restore from disk is inside it) and their ratio; the target is
0.1x or less.

    python3 benches/warm.py [--hearth target/release/hearth] [--port 11599] [MODEL ...]
"""
import argparse, json, os, signal, subprocess, tempfile, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--hearth", default="target/release/hearth")
ap.add_argument("--port", type=int, default=11599)
ap.add_argument("models", nargs="*", default=["smollm2:135m", "gemma3:270m"])
args = ap.parse_args()
base = f"http://127.0.0.1:{args.port}"


def start(data):
    p = subprocess.Popen([args.hearth, "serve", "--port", str(args.port), "--parallel", "1"],
                         env={**os.environ, "HEARTH_DATA": data}, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/api/version")
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise SystemExit("hearth serve did not start")


def chat(model, msgs):
    body = {"model": model, "messages": msgs, "stream": False, "options": {"temperature": 0, "num_predict": 16}}
    req = urllib.request.Request(base + "/api/chat", json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait()


facts = " ".join(f"Fact {i}: the box number {i} holds {i * 7} marbles and sits on shelf {i % 9}." for i in range(90))
for model in args.models:
    data = tempfile.mkdtemp(prefix="hearth-warm-")
    msgs = [{"role": "user", "content": facts + " How many marbles are in box 12?"}]
    p = start(data)
    a = chat(model, msgs)
    stop(p)
    msgs += [a["message"], {"role": "user", "content": "And in box 13?"}]
    p = start(data)
    b = chat(model, msgs)
    stop(p)
    first, second = a["prompt_eval_duration"] / 1e6, b["prompt_eval_duration"] / 1e6
    print(f"{model}: first turn {a['prompt_eval_count']} tokens {first:.0f} ms; second turn after a restart "
          f"{b['prompt_eval_count']} tokens {second:.0f} ms; {second / first:.3f}x")
