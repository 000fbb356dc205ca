"""Drives hearth's embedding endpoints with the official `ollama` Python client, unchanged.

Run by tests/embed.rs with OLLAMA_HOST pointing at the server and MODEL naming a model.
"""
import math
import os

import ollama

model = os.environ["MODEL"]
client = ollama.Client(host=os.environ["OLLAMA_HOST"])


def norm(v):
    return math.sqrt(sum(x * x for x in v))


batch = client.embed(model=model, input=["The first text.", "A second one.", "Third"])
assert len(batch.embeddings) == 3, batch
width = len(batch.embeddings[0])
assert width > 0 and all(len(e) == width for e in batch.embeddings), [len(e) for e in batch.embeddings]
assert all(abs(norm(e) - 1) < 1e-3 for e in batch.embeddings), [norm(e) for e in batch.embeddings]
assert batch.prompt_eval_count > 0 and batch.total_duration > 0, batch

one = client.embed(model=model, input="The first text.")
assert len(one.embeddings) == 1 and len(one.embeddings[0]) == width, one

short = client.embed(model=model, input="The first text.", dimensions=32)
assert len(short.embeddings[0]) == 32 and abs(norm(short.embeddings[0]) - 1) < 1e-3, short

legacy = client.embeddings(model=model, prompt="The first text.")
assert len(legacy.embedding) == width, len(legacy.embedding)

try:
    client.embed(model="no-such-model", input="x")
    raise AssertionError("expected an error for an unknown model")
except ollama.ResponseError as e:
    assert e.status_code == 404, e

print("all ok")
