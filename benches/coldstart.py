"""Cold start: a new process, a model not loaded yet, one short prompt, to the first token.

`hearth run MODEL "hi"` next to llama.cpp's own CLI (`llama-cli -st`, one turn) on the same
file, threads and page cache (each runs once first, unmeasured, so the file is in the page
cache: a warm page cache, as the target says). For each process it records the time from
spawn to the first byte of the answer on stdout (hearth prints only the answer; llama-cli prints
a banner and echoes the prompt as "> hi" first, so its answer starts after that line) and to
exit, 8 greedy tokens. Repetitions alternate the two; medians are printed.

    python3 benches/coldstart.py --cli PATH/llama-cli [--hearth target/debug/hearth] [--reps 5]
        [--threads N] [MODEL]
(benches/coldstart.sh finds llama-cli and the threads.)
"""
import argparse
import os
import statistics
import subprocess
import time

ap = argparse.ArgumentParser()
ap.add_argument("--cli", required=True)
ap.add_argument("--hearth", default="target/debug/hearth")
ap.add_argument("--reps", type=int, default=5)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--models-dir", default=os.path.expanduser("~/.local/share/hearth/models"))
ap.add_argument("model", nargs="?", default="smollm2:135m")
args = ap.parse_args()
path = f"{args.models_dir}/{args.model}.gguf"


def timed(cmd, marker):
    """Seconds from spawn to the first answer byte (the first byte after `marker`, or the first
    byte at all) and to exit."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen, first = b"", None
    while True:
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
        answer = seen if marker is None else seen.partition(marker)[2]
        if first is None and answer.strip():
            first = time.perf_counter() - start
    p.wait()
    total = time.perf_counter() - start
    if p.returncode != 0 or first is None:
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}): {seen[-300:]!r}")
    return first, total


runs = {
    "hearth run": ([args.hearth, "run", args.model, "hi", "--num-predict", "8", "--temperature", "0",
                    "--threads", str(args.threads)], None),
    "llama-cli": ([args.cli, "-m", path, "-p", "hi", "-n", "8", "-st", "--temp", "0", "-t", str(args.threads)],
                  b"> hi\n"),
}
for cmd, marker in runs.values():
    timed(cmd, marker)  # the page cache and the dynamic loader's files
samples = {name: [] for name in runs}
for _ in range(args.reps):
    for name, (cmd, marker) in runs.items():
        samples[name].append(timed(cmd, marker))
print(f"{args.model}, {args.threads} threads, {args.reps} runs each, medians")
print(f"{'':<12} {'first token s':>14} {'exit s':>8}")
for name, rows in samples.items():
    print(f"{name:<12} {statistics.median(r[0] for r in rows):14.3f} {statistics.median(r[1] for r in rows):8.3f}")
h, c = samples["hearth run"], samples["llama-cli"]
print(f"ratio hearth / llama-cli: first token {statistics.median(a[0] / b[0] for a, b in zip(h, c)):.2f}x, "
      f"exit {statistics.median(a[1] / b[1] for a, b in zip(h, c)):.2f}x")
