"""Parses hearth's /metrics with Prometheus' own text parser, sends traffic, and checks that the
counters moved. Env: HEARTH_URL. Prints "all ok"."""
import json
import os
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

URL = os.environ["HEARTH_URL"]


def scrape():
    with urllib.request.urlopen(URL + "/metrics") as r:
        assert r.headers["Content-Type"].startswith("text/plain"), r.headers["Content-Type"]
        text = r.read().decode()
    samples = {}
    families = set()
    for fam in text_string_to_metric_families(text):
        families.add(fam.name)
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            samples[key] = s.value
    return families, samples


def total(samples, name, **labels):
    return sum(v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


def generate(prompt):
    body = json.dumps({"model": "smollm2:135m", "prompt": prompt, "stream": False,
                       "options": {"temperature": 0, "num_predict": 8}}).encode()
    req = urllib.request.Request(URL + "/api/generate", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


generate("Warm up.")
fams, before = scrape()
for needed in ["hearth_requests", "hearth_request_duration_seconds", "hearth_time_to_first_token_seconds",
               "hearth_prompt_tokens", "hearth_generated_tokens", "hearth_cache_requests", "hearth_queue_depth",
               "hearth_loaded_models", "hearth_model_bytes", "hearth_ram_budget_bytes", "hearth_ram_used_bytes",
               "hearth_estimated_cost", "hearth_generation_duration_seconds"]:
    assert needed in fams, f"{needed} missing from {sorted(fams)}"

generate("Name a colour.")
generate("Name a colour.")  # the same request again: a cache hit
_, after = scrape()

def moved(name, **labels):
    b, a = total(before, name, **labels), total(after, name, **labels)
    assert a > b, f"{name} {labels} did not move: {b} -> {a}"

moved("hearth_requests_total", route="/api/generate", model="smollm2:135m", status="200")
moved("hearth_generated_tokens_total", model="smollm2:135m")
moved("hearth_prompt_tokens_total", model="smollm2:135m")
moved("hearth_cache_requests_total", result="hit")
moved("hearth_cache_requests_total", result="miss")
moved("hearth_time_to_first_token_seconds_count", model="smollm2:135m")
assert total(after, "hearth_loaded_models") >= 1
assert total(after, "hearth_ram_budget_bytes") > 0
print("all ok")
