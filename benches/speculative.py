"""Speculative decoding (prompt lookup) against plain decoding and llama-bench at the same depth.

Called by benches/speculative.sh. For each model it starts two long-lived `hearth stdio`
processes, one with `--speculative lookup` (the default) and one with `--speculative off`, and
asks both for the same greedy answers (chat template, temperature 0, 256 tokens) to three
tasks: quoting back a ~1k-token document, rewriting a ~600-token code file with one name
changed, and a story (nothing to copy). Decode speed is (eval_count - 1) / eval_duration, as in
compare.py; llama-bench's is tg128 at the depth of the task's prompt (`-d N`, N the prompt's
token count, `-p 0`). Repetitions alternate the three, each prompt gets a fresh prefix ("Run
k.") so no run reuses another's cache, and ratios are medians. "same" says whether the two
hearth answers are the same text. Both run with `--prefix-reuse fast`, so that neither re-reads
its answer in the background (exact reuse does, once idle) while the other or llama-bench is
measured.
"""
import argparse
import json
import statistics
import subprocess
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--bench", required=True)
ap.add_argument("--hearth", required=True)
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--models-dir", required=True)
ap.add_argument("models", nargs="+")
args = ap.parse_args()

ANIMALS = ["otter", "heron", "badger", "lynx", "marten", "plover", "newt", "vole"]
DOC = "\n".join(
    f"Section {i}. The {ANIMALS[i % 8]} survey of valley {i} counted {i * 13 % 97} nests near the "
    f"river bend, {i * 7 % 31} of them new this year; the team returns in spring to check the "
    f"{ANIMALS[(i + 3) % 8]} burrows by the old mill."
    for i in range(1, 25)
)
CODE = "\n".join(
    f"def parse_{n}(text):\n    \"\"\"Reads the {n} field.\"\"\"\n    value = parse(text, \"{n}\")\n"
    f"    if value is None:\n        raise ValueError(\"no {n}\")\n    return value.strip()\n"
    for n in ["name", "host", "port", "user", "path", "mode", "size", "owner", "group", "level"]
)
TASKS = {
    "quote": f"Here is a document.\n\n{DOC}\n\nRepeat the whole document exactly, word for word.",
    "code": f"Here is a Python file.\n\n{CODE}\nRewrite the file with the function `parse` renamed to `read_field`. Output the whole file.",
    "story": "Write a short story about a dragon who learns to bake bread.",
}
OPTIONS = {"temperature": 0, "num_predict": 256, "num_ctx": 4096}


def ask(proc, req):
    proc.stdin.write(json.dumps(req) + "\n")
    proc.stdin.flush()
    r = json.loads(proc.stdout.readline())
    if "error" in r:
        sys.exit(f"hearth: {r['error']}")
    return r


def tg_at(model, depth):
    out = subprocess.run(
        [args.bench, "-m", model, "-t", str(args.threads), "-p", "0", "-n", "128", "-d", str(depth), "-r", "1", "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)[0]["avg_ts"]


def start(path, mode):
    proc = subprocess.Popen(
        [args.hearth, "stdio", path, "--threads", str(args.threads), "--speculative", mode, "--prefix-reuse", "fast"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    ask(proc, {"prompt": "Hello", "options": {"num_predict": 4}})  # warm-up
    return proc


print(f"threads={args.threads} reps={args.reps}")
print(f"{'model':<14} {'task':<6} {'depth':>5} {'tg@depth':>9} {'plain':>7} {'lookup':>7} {'plain/b':>8} {'lookup/b':>9} {'lookup/plain':>13} same")
for name in args.models:
    path = f"{args.models_dir}/{name}.gguf"
    lookup, plain = start(path, "lookup"), start(path, "off")
    for task, prompt in TASKS.items():
        rows = []
        for rep in range(args.reps):
            req = {"prompt": f"Run {rep}. {prompt}", "options": OPTIONS}
            a, b = ask(lookup, req), ask(plain, req)
            depth = a["prompt_eval_count"]
            bench = tg_at(path, depth)
            speed = lambda r: (r["eval_count"] - 1) / (r["eval_duration"] / 1e9)
            rows.append((depth, bench, speed(b), speed(a), a["response"] == b["response"]))
        med = lambda i: statistics.median(r[i] for r in rows)
        ratio = lambda i, j: statistics.median(r[i] / r[j] for r in rows)
        same = all(r[4] for r in rows)
        print(f"{name:<14} {task:<6} {rows[0][0]:5d} {med(1):9.1f} {med(2):7.1f} {med(3):7.1f} {ratio(2, 1):7.2f}x"
              f" {ratio(3, 1):8.2f}x {ratio(3, 2):12.2f}x {'yes' if same else 'NO'}")
    for proc in (lookup, plain):
        proc.stdin.close()
        proc.wait()
