"""Random JSON schemas through both APIs on a hearth server: every answer parses and validates.

Run by tests/openai.rs with OLLAMA_HOST, MODELS (comma-separated) and COUNT set. Uses the
official `ollama` and `openai` clients unchanged, sampling at temperature 0.8 so the grammar,
not greedy luck, is what keeps the output valid.
"""
import json
import os
import random

import jsonschema
import ollama
import openai

host = os.environ["OLLAMA_HOST"]
models = os.environ["MODELS"].split(",")
count = int(os.environ.get("COUNT", "6"))
rng = random.Random(int(os.environ.get("SEED", "7")))
ol = ollama.Client(host=host)
oa = openai.OpenAI(base_url=host + "/v1", api_key="unused")

WORDS = ["name", "age", "city", "color", "score", "tags", "owner", "items", "active", "kind", "size", "notes"]


def scalar(depth):
    kind = rng.choice(["string", "integer", "number", "boolean", "enum"])
    if kind == "string":
        return {"type": "string", "maxLength": rng.choice([8, 16, 24])}
    if kind == "integer":
        return {"type": "integer", "minimum": 0, "maximum": rng.choice([9, 99, 999])}
    if kind == "number":
        return {"type": "number"}
    if kind == "boolean":
        return {"type": "boolean"}
    return {"enum": rng.sample(["red", "green", "blue", "cat", "dog", "yes", "no"], rng.randint(2, 4))}


def schema(depth=0):
    roll = rng.random()
    if depth < 2 and roll < 0.3:
        return {"type": "array", "items": schema(depth + 1), "minItems": 1, "maxItems": rng.randint(1, 3)}
    if depth < 2 and roll < 0.6:
        return obj(depth + 1)
    return scalar(depth)


def obj(depth=0):
    keys = rng.sample(WORDS, rng.randint(1, 4))
    props = {k: schema(depth) for k in keys}
    required = [k for k in keys if rng.random() < 0.7] or keys[:1]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


checked = 0
for i in range(count):
    s = obj()
    for model in models:
        prompt = f"Describe something as JSON. Keys: {', '.join(s['properties'])}."
        r = ol.chat(model=model, messages=[{"role": "user", "content": prompt}], format=s,
                    options={"temperature": 0.8, "num_predict": 400})
        out = json.loads(r.message.content)
        jsonschema.validate(out, s)
        r = oa.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], temperature=0.8, max_tokens=400,
            response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": s}})
        out = json.loads(r.choices[0].message.content)
        jsonschema.validate(out, s)
        checked += 2
    # JSON mode: any object.
    r = oa.chat.completions.create(model=models[0], messages=[{"role": "user", "content": "A JSON object about a dog."}],
                                   temperature=0.8, max_tokens=300, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)

print(f"all ok: {checked} schema answers validated")
