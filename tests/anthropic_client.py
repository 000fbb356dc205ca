"""Drives hearth's /v1/messages with the official `anthropic` Python SDK, unchanged.

Run by tests/agents.rs with ANTHROPIC_BASE_URL pointing at the server and MODEL naming a model.
Asserts what is exact (shapes, counts, stop reasons, schema validity, the same answer twice),
never the model's wording.
"""
import json
import os

import anthropic

model = os.environ["MODEL"]
client = anthropic.Anthropic(base_url=os.environ["ANTHROPIC_BASE_URL"], api_key="unused")
greedy = {"temperature": 0}

# A plain answer; the same request twice gives the same text.
m = client.messages.create(model=model, max_tokens=16, system="Be brief.", messages=[{"role": "user", "content": "Say hi."}], extra_body=greedy)
assert m.type == "message" and m.role == "assistant" and m.model == model, m
assert m.id.startswith("msg_"), m.id
assert [b.type for b in m.content] == ["text"] and m.content[0].text, m
assert m.stop_reason in ("end_turn", "max_tokens"), m.stop_reason
assert 0 < m.usage.output_tokens <= 16, m.usage
again = client.messages.create(model=model, max_tokens=16, system="Be brief.", messages=[{"role": "user", "content": "Say hi."}], extra_body=greedy)
assert again.content[0].text == m.content[0].text, "temperature 0 repeats"

# count_tokens counts the prompt the answer was given: evaluated plus reused tokens.
count = client.messages.count_tokens(model=model, system="Be brief.", messages=[{"role": "user", "content": "Say hi."}])
assert count.input_tokens == m.usage.input_tokens + m.usage.cache_read_input_tokens, (count, m.usage)

# max_tokens reached.
m = client.messages.create(model=model, max_tokens=2, messages=[{"role": "user", "content": "Write a long story about the sea."}], extra_body=greedy)
assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 2, m

# A stop sequence taken from the unconstrained answer ends it there and is reported.
long = client.messages.create(model=model, max_tokens=40, messages=[{"role": "user", "content": "Write a poem about rivers."}], extra_body=greedy)
words = [w for w in long.content[0].text.split() if len(w) >= 4]
if len(words) >= 3:
    stop = words[len(words) // 2]
    cut = client.messages.create(model=model, max_tokens=40, stop_sequences=[stop], messages=[{"role": "user", "content": "Write a poem about rivers."}], extra_body=greedy)
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop, cut
    assert stop not in cut.content[0].text, cut

# Streaming: the SDK rebuilds the same message from the named events.
with client.messages.stream(model=model, max_tokens=16, system="Be brief.", messages=[{"role": "user", "content": "Say hi."}], extra_body=greedy) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
assert streamed == final.content[0].text, (streamed, final)
assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens"), final

# Tools: a forced call comes back as a tool_use block with input fitting the schema, then
# the result goes back as a tool_result block.
tools = [{"name": "get_weather", "description": "Current weather for a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
question = {"role": "user", "content": "What is the weather in Paris?"}
for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
    m = client.messages.create(model=model, max_tokens=64, tools=tools, tool_choice=choice, messages=[question], extra_body=greedy)
    assert m.stop_reason == "tool_use", m
    use = [b for b in m.content if b.type == "tool_use"]
    assert len(use) == 1 and use[0].name == "get_weather" and isinstance(use[0].input.get("city"), str), m
    assert use[0].id.startswith("toolu_"), use[0].id
result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use[0].id, "content": "22 degrees and sunny"}]}
after = client.messages.create(model=model, max_tokens=32, tools=tools, tool_choice={"type": "none"}, messages=[question, {"role": "assistant", "content": m.content}, result], extra_body=greedy)
assert [b.type for b in after.content] == ["text"] and after.stop_reason in ("end_turn", "max_tokens"), after

# A streamed call: input_json_delta events rebuild the input.
with client.messages.stream(model=model, max_tokens=64, tools=tools, tool_choice={"type": "any"}, messages=[question], extra_body=greedy) as s:
    final = s.get_final_message()
assert final.stop_reason == "tool_use" and final.content[-1].type == "tool_use", final
assert isinstance(final.content[-1].input["city"], str), final.content[-1]

# Structured output through output_config.format.
schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"], "additionalProperties": False}
m = client.messages.create(model=model, max_tokens=64, output_config={"format": {"type": "json_schema", "schema": schema}},
                           messages=[{"role": "user", "content": "Describe a person as JSON."}], extra_body=greedy)
if m.stop_reason == "end_turn":
    person = json.loads(m.content[0].text)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int), person

# Errors come in Anthropic's shape, with the SDK's error classes.
try:
    client.messages.create(model="no-such-model", max_tokens=4, messages=[question])
    raise AssertionError("unknown model accepted")
except anthropic.NotFoundError as e:
    assert e.body["type"] == "error" and e.body["error"]["type"] == "not_found_error", e.body
try:
    client.messages.create(model=model, max_tokens=4, messages=[{"role": "system", "content": "x"}])
    raise AssertionError("system role accepted")
except anthropic.BadRequestError as e:
    assert e.body["error"]["type"] == "invalid_request_error" and "messages.0.role" in e.body["error"]["message"], e.body
try:
    client.messages.create(model=model, max_tokens=4, messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}])
    raise AssertionError("image accepted")
except anthropic.BadRequestError as e:
    assert "image" in e.body["error"]["message"], e.body

print("all ok")
