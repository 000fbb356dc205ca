"""Manages models on a hearth server with the official `ollama` Python client, unchanged:
blob upload + create, copy, list, pull with progress, delete.

Run by tests/store.rs with OLLAMA_HOST, MODEL_PATH (a GGUF file) and PULL_URL set.
"""
import os

import ollama

client = ollama.Client(host=os.environ["OLLAMA_HOST"])

digest = client.create_blob(os.environ["MODEL_PATH"])
assert digest.startswith("sha256:"), digest

done = client.create(
    model="pybot",
    files={"model.gguf": digest},
    system="You are Bob, a helpful robot.",
    parameters={"temperature": 0, "num_predict": 8},
)
assert done.status == "success", done

shown = client.show("pybot")
assert "temperature 0" in shown.parameters, shown

gen = client.generate(model="pybot", prompt="Hi")
assert gen.done and gen.eval_count == 8, gen

client.copy("pybot", "pybot2:v2")
names = [m.model for m in client.list().models]
assert "pybot:latest" in names and "pybot2:v2" in names, names

progress = list(client.pull(os.environ["PULL_URL"], stream=True))
assert progress[-1].status == "success", progress
assert any(p.completed and p.total for p in progress), progress
assert "pulled-by-python:latest" in [m.model for m in client.list().models]

client.delete("pybot")
try:
    client.delete("pybot")
    raise AssertionError("expected 404 for a deleted model")
except ollama.ResponseError as e:
    assert e.status_code == 404, e
assert client.show("pybot2:v2").details.family == "llama"

print("all ok")
