"""Drives hearth's /v1/responses with the official `openai` Python SDK, unchanged.

Run by tests/agents.rs in two phases against servers sharing one data directory: PHASE=first
makes a chain of stored responses and writes their ids to IDS_FILE; PHASE=second (after a
restart) continues the chain with previous_response_id and deletes a response. Asserts what is
exact (shapes, counts, stored state, schema validity), never the model's wording.
"""
import json
import os

import openai

model = os.environ["MODEL"]
client = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="unused")
ids_file = os.environ["IDS_FILE"]
tools = [{"type": "function", "name": "get_weather", "description": "Current weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def final_of(stream):
    """The response a stream ends with (completed, or incomplete at max_output_tokens)."""
    last = None
    types = []
    for ev in stream:
        types.append(ev.type)
        if ev.type in ("response.completed", "response.incomplete"):
            last = ev.response
    assert types[:2] == ["response.created", "response.in_progress"], types
    assert last is not None, types
    return last, types


if os.environ["PHASE"] == "first":
    r1 = client.responses.create(model=model, instructions="Be brief.", input="My name is Ada.", max_output_tokens=16, temperature=0)
    assert r1.id.startswith("resp_") and r1.object == "response" and r1.model == model, r1
    assert r1.status in ("completed", "incomplete") and r1.output_text, r1
    assert r1.usage.output_tokens <= 16 and r1.usage.total_tokens == r1.usage.input_tokens + r1.usage.output_tokens, r1.usage
    # The next turn sees the first: its prompt holds the first turn's messages.
    r2 = client.responses.create(model=model, input="What is my name?", previous_response_id=r1.id, max_output_tokens=16, temperature=0)
    assert r2.previous_response_id == r1.id, r2
    assert r2.usage.input_tokens > r1.usage.input_tokens, (r1.usage, r2.usage)
    # Stored: retrieve gives back the same object.
    got = client.responses.retrieve(r1.id)
    assert got.id == r1.id and got.output_text == r1.output_text, got
    # A forced function call, then its output in the next turn.
    call = client.responses.create(model=model, input="What is the weather in Paris?", tools=tools, tool_choice="required", temperature=0)
    item = call.output[0]
    assert item.type == "function_call" and item.name == "get_weather" and isinstance(json.loads(item.arguments)["city"], str), call.output
    after = client.responses.create(model=model, previous_response_id=call.id, input=[{"type": "function_call_output", "call_id": item.call_id, "output": "22 C"}],
                                    tools=tools, tool_choice="none", max_output_tokens=16, temperature=0)
    assert after.output[0].type == "message", after.output
    # Streaming: the events rebuild the same text, and the streamed response is stored too.
    with client.responses.stream(model=model, input="Count to three.", max_output_tokens=12, temperature=0) as s:
        streamed, types = final_of(s)
    assert "response.output_text.delta" in types and types[-1] in ("response.completed", "response.incomplete"), types
    assert client.responses.retrieve(streamed.id).output_text == streamed.output_text
    with client.responses.stream(model=model, input="Weather in Rome?", tools=tools, tool_choice={"type": "function", "name": "get_weather"}) as s:
        called, types = final_of(s)
    assert "response.function_call_arguments.done" in types and called.output[0].type == "function_call", types
    # Structured output through text.format.
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"], "additionalProperties": False}
    r = client.responses.create(model=model, input="Describe a person.", text={"format": {"type": "json_schema", "name": "person", "schema": schema}}, temperature=0)
    if r.status == "completed":
        person = json.loads(r.output_text)
        assert set(person) == {"name", "age"} and isinstance(person["age"], int), person
    # store: false keeps nothing.
    gone = client.responses.create(model=model, input="Hi", store=False, max_output_tokens=4)
    try:
        client.responses.retrieve(gone.id)
        raise AssertionError("a store: false response was stored")
    except openai.NotFoundError as e:
        assert e.body["code"] == "response_not_found", e.body
    with open(ids_file, "w") as f:
        json.dump({"r1": r1.id, "r2": r2.id, "r2_input": r2.usage.input_tokens, "r2_output": r2.usage.output_tokens}, f)
else:
    with open(ids_file) as f:
        ids = json.load(f)
    # After a restart the chain is still there and continues.
    assert client.responses.retrieve(ids["r2"]).previous_response_id == ids["r1"]
    r3 = client.responses.create(model=model, input="And again?", previous_response_id=ids["r2"], max_output_tokens=8, temperature=0)
    assert r3.usage.input_tokens > ids["r2_input"] + ids["r2_output"], (r3.usage, ids)
    deleted = client.responses.delete(ids["r1"])
    try:
        client.responses.retrieve(ids["r1"])
        raise AssertionError("a deleted response is still there")
    except openai.NotFoundError:
        pass
    try:
        client.responses.create(model=model, input="x", previous_response_id="resp_nothing_here")
        raise AssertionError("an unknown previous_response_id was accepted")
    except openai.NotFoundError as e:
        assert e.body["param"] == "previous_response_id", e.body
    try:
        client.responses.create(model=model, input=[{"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "x"}]}])
        raise AssertionError("an image was accepted")
    except openai.BadRequestError as e:
        assert "input_image" in e.body["message"], e.body

print("all ok")
