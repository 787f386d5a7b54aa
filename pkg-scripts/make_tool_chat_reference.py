#!/usr/bin/env python3
"""Writes tests/data/gemma4/tool_chat.json: Gemma 4 conversations with tool calls, rendered by
transformers' apply_chat_template with the chat template the tiny Gemma 4 fixtures embed
(tests/data/gemma4/chat_template.json) and tokenized with their tokenizer.json.

transformers takes Google's message format: a model turn's calls in `tool_calls` (arguments as
an object) and the tools' results on that same message (`tool_responses: [{name, response}]`),
followed by what the model said next as its `content`. The engine takes OpenAI's format (the
results as `role: tool` messages) and converts it (src/tool_calls.rs); each case holds both, so
tests/tool_calls.rs checks that the conversion and the Rust template engine give exactly this
text and these ids.

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install transformers jinja2
    /tmp/tfvenv/bin/python pkg-scripts/make_tool_chat_reference.py
"""

import json
import os

from transformers import PreTrainedTokenizerFast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data", "gemma4")

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object",
                       "properties": {
                           "city": {"type": "string", "description": "City name"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                           "days": {"type": "integer", "description": "Days ahead"}},
                       "required": ["city", "unit"]}}},
    {"type": "function", "function": {
        "name": "set_alarm",
        "description": "Sets an alarm",
        "parameters": {"type": "object",
                       "properties": {"time": {"type": "string"},
                                      "labels": {"type": "array", "items": {"type": "string"}}},
                       "required": ["time"]}}},
]

WEATHER_ARGS = {"city": "Paris", "unit": "celsius"}
WEATHER_RESULT = {"temperature": 21, "sky": "clear"}


def openai_call(call_id, name, args):
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}


def google_call(name, args):
    return {"type": "function", "function": {"name": name, "arguments": args}}


CASES = [
    {
        "name": "call_then_result",
        "openai_messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None,
             "tool_calls": [openai_call("c1", "get_weather", WEATHER_ARGS)]},
            {"role": "tool", "tool_call_id": "c1", "content": json.dumps(WEATHER_RESULT)},
        ],
        "google_messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "",
             "tool_calls": [google_call("get_weather", WEATHER_ARGS)],
             "tool_responses": [{"name": "get_weather", "response": WEATHER_RESULT}]},
        ],
    },
    {
        "name": "system_two_calls_answer_then_user",
        "openai_messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Weather in Paris, and wake me at 7."},
            {"role": "assistant", "content": None,
             "tool_calls": [openai_call("c1", "get_weather", WEATHER_ARGS),
                            openai_call("c2", "set_alarm", {"time": "07:00", "labels": ["work", "early"]})]},
            {"role": "tool", "tool_call_id": "c1", "content": json.dumps(WEATHER_RESULT)},
            {"role": "tool", "tool_call_id": "c2", "content": "alarm set"},
            {"role": "assistant", "content": "It is 21 degrees and clear. Your alarm is set for 7:00."},
            {"role": "user", "content": "Thanks!"},
        ],
        "google_messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Weather in Paris, and wake me at 7."},
            {"role": "assistant",
             "content": "It is 21 degrees and clear. Your alarm is set for 7:00.",
             "tool_calls": [google_call("get_weather", WEATHER_ARGS),
                            google_call("set_alarm", {"time": "07:00", "labels": ["work", "early"]})],
             "tool_responses": [{"name": "get_weather", "response": WEATHER_RESULT},
                                {"name": "set_alarm", "response": "alarm set"}]},
            {"role": "user", "content": "Thanks!"},
        ],
    },
    {
        "name": "tools_declared_no_calls",
        "openai_messages": [{"role": "user", "content": "Hello there."}],
        "google_messages": [{"role": "user", "content": "Hello there."}],
    },
]


def main():
    template = json.load(open(os.path.join(DATA, "chat_template.json")))["template"]
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(DATA, "tokenizer.json"),
                                  bos_token="<bos>", eos_token="<eos>")
    out_cases = []
    for case in CASES:
        text = tok.apply_chat_template(case["google_messages"], tools=TOOLS, chat_template=template,
                                       add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids.count(tok.convert_tokens_to_ids("<bos>")) == 1, "exactly one BOS"
        out_cases.append({"name": case["name"], "openai_messages": case["openai_messages"],
                          "google_messages": case["google_messages"], "tools": TOOLS,
                          "text": text, "ids": ids})
    import transformers
    result = {
        "format": "gemma-wgpu-tool-chat/1",
        "notes": [
            f"Rendered by transformers {transformers.__version__} apply_chat_template(google_messages, "
            "tools=tools, add_generation_prompt=True) with tests/data/gemma4/chat_template.json's "
            "template; ids = tokenizer.json encode(text, add_special_tokens=False).",
            "openai_messages is the same conversation as an OpenAI client sends it (tool results as "
            "role 'tool' messages, arguments as JSON text): the engine must render it to exactly "
            "'text'.",
        ],
        "cases": out_cases,
    }
    path = os.path.join(DATA, "tool_chat.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
