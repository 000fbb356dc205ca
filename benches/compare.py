"""Runs llama-bench and hearth alternately on the same model and threads; prints tok/s and ratios.

Called by benches/compare.sh (which builds llama-bench). Each repetition runs llama-bench once
(pp512 and tg128) and then the same work through one long-lived `hearth stdio` process:
a ~512-token raw prompt with num_predict 1 (prefill: prompt_eval_count / prompt_eval_duration)
and a short raw prompt with num_predict 128 at temperature 0 (decode: (eval_count - 1) /
eval_duration, the tokens decoded after the first). hearth's numbers include tokenizing,
sampling, detokenizing and JSON; llama-bench's do not. Ratios are medians over repetitions.

`--hearth` may be given several times as LABEL=PATH (the portable build next to a native one,
say): each repetition then runs llama-bench and every hearth in turn, one row per hearth.

hearth runs with `--prefix-reuse fast`: every prompt starts differently, so nothing is reused
either way, and exact reuse would re-read each answer once the process is idle, on the same
cores as the next process's (or llama-bench's) measured work. The kernels and the prompt's
chunks are the same in both modes.
"""
import argparse
import json
import statistics
import subprocess
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--bench", required=True)
ap.add_argument("--hearth", required=True, action="append", help="PATH or LABEL=PATH; repeatable")
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--models-dir", required=True)
ap.add_argument("--json", action="store_true", help="print one JSON object per model")
ap.add_argument("models", nargs="+")
args = ap.parse_args()

LONG = " ".join(f"item {i} is a number." for i in range(65))  # ~512 tokens on both test models
PP = {"prompt": LONG, "raw": True, "options": {"num_predict": 1, "temperature": 0, "num_ctx": 2048}}
TG = {"prompt": "Once upon a time", "raw": True, "options": {"num_predict": 128, "temperature": 0, "num_ctx": 2048}}


def llama_bench(model):
    out = subprocess.run(
        [args.bench, "-m", model, "-t", str(args.threads), "-p", "512", "-n", "128", "-r", "1", "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    rows = json.loads(out)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)
    return pp, tg


def ask(proc, req):
    proc.stdin.write(json.dumps(req) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    r = json.loads(line)
    if "error" in r:
        sys.exit(f"hearth: {r['error']}")
    return r


hearths = [h.split("=", 1) if "=" in h else ["hearth", h] for h in args.hearth]
print(f"threads={args.threads} reps={args.reps}")
print(f"{'model':<14} {'build':<10} {'pp bench':>9} {'pp hearth':>10} {'ratio':>7} {'tg bench':>9} {'tg hearth':>10} {'ratio':>7}")
for name in args.models:
    path = f"{args.models_dir}/{name}.gguf"
    procs = []
    for _, binary in hearths:
        proc = subprocess.Popen(
            [binary, "stdio", path, "--threads", str(args.threads), "--prefix-reuse", "fast"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        ask(proc, {**TG, "options": {**TG["options"], "num_predict": 8}})  # warm-up
        procs.append(proc)
    samples = [[] for _ in hearths]
    for rep in range(args.reps):
        pp_b, tg_b = llama_bench(path)
        for i, proc in enumerate(procs):
            # A different start each time: hearth reuses a cached prompt prefix, llama-bench
            # never does, and pp measures processing the whole prompt.
            rp = ask(proc, {**PP, "prompt": f"Run {rep}: {LONG}"})
            rt = ask(proc, TG)
            pp_h = rp["prompt_eval_count"] / (rp["prompt_eval_duration"] / 1e9)
            tg_h = (rt["eval_count"] - 1) / (rt["eval_duration"] / 1e9)
            samples[i].append((pp_b, pp_h, tg_b, tg_h, rp["prompt_eval_count"], rt["eval_count"]))
    for proc in procs:
        proc.stdin.close()
        proc.wait()
    for (label, _), rows in zip(hearths, samples):
        med = lambda i: statistics.median(s[i] for s in rows)
        pp_ratio = statistics.median(s[1] / s[0] for s in rows)
        tg_ratio = statistics.median(s[3] / s[2] for s in rows)
        if args.json:
            print(json.dumps({"model": name, "build": label, "pp_bench": med(0), "pp_hearth": med(1),
                              "pp_ratio": pp_ratio, "tg_bench": med(2), "tg_hearth": med(3),
                              "tg_ratio": tg_ratio, "samples": rows}))
        else:
            print(f"{name:<14} {label:<10} {med(0):9.1f} {med(1):10.1f} {pp_ratio:6.2f}x {med(2):9.1f} {med(3):10.1f}"
                  f" {tg_ratio:6.2f}x   (hearth: {rows[0][4]}-token prompt, {rows[0][5]} tokens generated)")
    # Builds against the first, repetition by repetition (they ran back to back, so the noise of
    # a shared machine cancels better than between medians).
    for (label, _), rows in list(zip(hearths, samples))[1:]:
        pp = statistics.median(r[1] / f[1] for r, f in zip(rows, samples[0]))
        tg = statistics.median(r[3] / f[3] for r, f in zip(rows, samples[0]))
        print(f"{name:<14} {label} / {hearths[0][0]}: prefill {pp:.3f}x, decode {tg:.3f}x")
