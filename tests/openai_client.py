"""Drives a hearth server with the official `openai` Python client, unchanged.

Run by tests/openai.rs with OPENAI_BASE_URL pointing at the server's /v1 and MODEL naming a
model.
"""
import json
import os

import openai

model = os.environ["MODEL"]
client = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="unused")

ids = [m.id for m in client.models.list().data]
assert model in ids, ids
assert client.models.retrieve(model).id == model

r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=12, temperature=0)
assert r.choices[0].message.role == "assistant" and r.choices[0].message.content, r
assert r.choices[0].finish_reason in ("stop", "length"), r
assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 0, r.usage
again = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=12, temperature=0)
assert again.choices[0].message.content == r.choices[0].message.content, "temperature 0 repeats"

chunks = list(client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": [{"type": "text", "text": "Count to three."}]}],
    max_tokens=16, stream=True, stream_options={"include_usage": True}))
assert chunks[-1].usage and chunks[-1].usage.completion_tokens > 0, chunks[-1]
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text, chunks
assert any(c.choices and c.choices[0].finish_reason for c in chunks), chunks

r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Pick a color."}], max_tokens=6, n=3, seed=11, temperature=1.0)
assert sorted(c.index for c in r.choices) == [0, 1, 2], r
assert 3 <= r.usage.completion_tokens <= 18, r.usage

r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, logprobs=True, top_logprobs=2)
lp = r.choices[0].logprobs.content
assert len(lp) == r.usage.completion_tokens and len(lp[0].top_logprobs) == 2 and lp[0].logprob <= 0, lp

r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, echo=True)
assert r.choices[0].text.startswith("The capital of France is"), r

tool = {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}}, "required": ["city", "unit"]}}}
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What's the weather in Oslo?"}],
                                   tools=[tool], tool_choice="required", temperature=0.7)
call = r.choices[0].message.tool_calls[0]
assert r.choices[0].finish_reason == "tool_calls", r
args = json.loads(call.function.arguments)
assert call.function.name == "get_weather" and isinstance(args["city"], str) and args["unit"] in ("C", "F"), args
chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Weather in Oslo?"}],
                                             tools=[tool], tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True))
calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
assert calls and json.loads(calls[0].function.arguments)["unit"] in ("C", "F"), chunks

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.body["type"] == "invalid_request_error", e.body

for bad, param in [
    (dict(n=0), "n"),
    (dict(tools=[tool], tool_choice="sometimes"), "tool_choice"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}), "response_format"),
]:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], **bad)
        raise AssertionError(f"expected a 400 for {bad}")
    except openai.BadRequestError as e:
        assert e.body["param"] == param and e.body["message"], e.body

if os.environ.get("EMBED") == "1":
    e = client.embeddings.create(model=model, input=["a cat", "a dog", "a car"])
    assert len(e.data) == 3 and [d.index for d in e.data] == [0, 1, 2], e
    assert len(e.data[0].embedding) > 100, len(e.data[0].embedding)
    assert e.usage.prompt_tokens > 0

print("all ok")
