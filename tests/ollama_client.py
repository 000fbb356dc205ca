"""Drives a hearth server with the official `ollama` Python client, unchanged.

Run by tests/tests.rs with OLLAMA_HOST pointing at the server and MODEL naming a model.
"""
import os

import ollama

model = os.environ["MODEL"]
client = ollama.Client(host=os.environ["OLLAMA_HOST"])

listed = client.list()
assert any(m.model == model for m in listed.models), listed

shown = client.show(model)
assert shown.details.family, shown
assert shown.template, shown

gen = client.generate(model=model, prompt="Why is the sky blue?", options={"temperature": 0, "num_predict": 16})
assert gen.done and gen.response and gen.eval_count > 0, gen

chunks = list(client.generate(model=model, prompt="Say hi.", stream=True, options={"num_predict": 8}))
assert chunks[-1].done and len(chunks) > 1, chunks

chat = client.chat(model=model, messages=[{"role": "user", "content": "Hello!"}], options={"num_predict": 16})
assert chat.message.role == "assistant" and chat.message.content, chat

parts = list(client.chat(model=model, messages=[{"role": "user", "content": "Hello!"}], stream=True, options={"num_predict": 8}))
assert parts[-1].done and "".join(p.message.content for p in parts), parts

ps = client.ps()
assert any(m.model == model for m in ps.models), ps

try:
    client.generate(model="no-such-model", prompt="x")
    raise AssertionError("expected an error for an unknown model")
except ollama.ResponseError as e:
    assert e.status_code == 404, e

print("all ok")
