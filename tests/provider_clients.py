"""Drives providers' models through a hearth front with the official `ollama` and `openai`
Python clients, unchanged: streaming, tools and structured output on `provider/model` names.

Run by tests/routing.rs with HEARTH_URL (the front), OLLAMA_MODEL (a model of an `ollama`
provider) and OPENAI_MODEL (a model of an `openai` provider).
"""
import json
import os

import ollama
import openai

url = os.environ["HEARTH_URL"]
ollama_model = os.environ["OLLAMA_MODEL"]
openai_model = os.environ["OPENAI_MODEL"]
weather = {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
schema = {"type": "object", "properties": {"color": {"type": "string"}, "count": {"type": "integer"}}, "required": ["color", "count"]}

o = ollama.Client(host=url)
names = [m.model for m in o.list().models]
assert ollama_model in names and openai_model in names, names
for model in (ollama_model, openai_model):
    parts = list(o.chat(model=model, messages=[{"role": "user", "content": "Count to five."}], stream=True, options={"num_predict": 12}))
    assert parts[-1].done and 0 < parts[-1].eval_count <= 12, parts[-1]
    assert "".join(p.message.content for p in parts), parts
    r = o.chat(model=model, messages=[{"role": "user", "content": "What's the weather in Oslo?"}], tools=[weather])
    call = r.message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(call.function.arguments["city"], str), r
    r = o.chat(model=model, messages=[{"role": "user", "content": "A color and a number, as JSON."}], format=schema, options={"temperature": 0})
    v = json.loads(r.message.content)
    assert isinstance(v["color"], str) and isinstance(v["count"], int), v
    e = o.embed(model=model, input=["a cat", "a dog"])
    assert len(e.embeddings) == 2 and len(e.embeddings[0]) > 100, len(e.embeddings)

c = openai.OpenAI(base_url=url + "/v1", api_key="unused")
ids = [m.id for m in c.models.list().data]
assert ollama_model in ids and openai_model in ids, ids
for model in (ollama_model, openai_model):
    chunks = list(c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=10,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage and 0 < chunks[-1].usage.completion_tokens <= 10, chunks[-1]
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[weather],
                                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.choices[0].finish_reason == "tool_calls", r
    # The call's shape is exact (the grammar holds it); its value is the model's, and sampled.
    assert isinstance(json.loads(r.choices[0].message.tool_calls[0].function.arguments)["city"], str), r
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "A color and a number."}], temperature=0,
                                  response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    v = json.loads(r.choices[0].message.content)
    assert isinstance(v["color"], str) and isinstance(v["count"], int), v
    try:
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], logprobs=True)
        raise AssertionError("expected a 400: providers give no logprobs")
    except openai.BadRequestError as e:
        assert "logprobs" in e.body["message"], e.body

print("all ok")
