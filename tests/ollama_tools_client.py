"""Structured output and tool calls through the official `ollama` Python client, unchanged.

Run by tests/openai.rs with OLLAMA_HOST and MODELS (comma-separated) set.
"""
import json
import os

import jsonschema
import ollama

client = ollama.Client(host=os.environ["OLLAMA_HOST"])

weather = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
tools = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": weather}},
    {"type": "function", "function": {"name": "add", "description": "Add two numbers",
     "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}},
]
person = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer", "minimum": 0}},
          "required": ["name", "age"]}

for model in os.environ["MODELS"].split(","):
    r = client.chat(model=model, messages=[{"role": "user", "content": "Invent a person."}], format=person,
                    options={"temperature": 0.8, "num_predict": 200})
    jsonschema.validate(json.loads(r.message.content), person)

    r = client.chat(model=model, messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=tools,
                    options={"temperature": 0.8, "num_predict": 128})
    calls = r.message.tool_calls
    assert calls and len(calls) == 1, r
    fn = calls[0].function
    params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert fn.name in params, fn
    jsonschema.validate(dict(fn.arguments), params[fn.name])

    # After the tool's result the model answers in text.
    r = client.chat(model=model, messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "content": "18 degrees and sunny"},
    ], tools=tools, options={"temperature": 0, "num_predict": 24})
    assert r.message.content or r.message.tool_calls, r

    stream = list(client.chat(model=model, messages=[{"role": "user", "content": "Add 2 and 3."}], tools=tools, stream=True,
                         options={"num_predict": 128}))
    calls = [c for part in stream for c in (part.message.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name in params, stream

try:
    client.chat(model=os.environ["MODELS"].split(",")[0], messages=[{"role": "user", "content": "x"}], format={"type": "objekt"})
    raise AssertionError("expected a 400 for an invalid schema")
except ollama.ResponseError as e:
    assert e.status_code == 400 and "schema.type" in e.error, e

print("all ok")
