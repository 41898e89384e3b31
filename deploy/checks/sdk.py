"""Points the official OpenAI and Anthropic Python SDKs at a running edge and
checks the answers, streamed and not, in both directions of translation.

Usage: EDGE_URL=http://127.0.0.1:8080 python3 deploy/checks/sdk.py
"""
import os
import sys

import anthropic
import openai

edge = os.environ["EDGE_URL"].rstrip("/")
failures = 0


def check(name, cond, detail=""):
    global failures
    print(("ok   " if cond else "FAIL ") + name + (f": {detail}" if detail and not cond else ""))
    if not cond:
        failures += 1


oa = openai.OpenAI(base_url=edge + "/v1", api_key="unused", max_retries=0)
r = oa.chat.completions.create(model="gpt-mock", messages=[{"role": "user", "content": "hi"}])
check("openai non-stream", bool(r.choices[0].message.content) and r.usage.completion_tokens > 0, str(r))

text, usage = "", None
for chunk in oa.chat.completions.create(
    model="claude-mock", stream=True, stream_options={"include_usage": True},
    messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
check("openai stream served by an anthropic model", bool(text) and usage is not None and usage.completion_tokens > 0, text)

try:
    oa.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    check("openai unknown model raises NotFoundError", False)
except openai.NotFoundError as e:
    check("openai unknown model raises NotFoundError", e.status_code == 404)

an = anthropic.Anthropic(base_url=edge, api_key="unused", max_retries=0)
m = an.messages.create(model="claude-mock", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
check("anthropic non-stream", m.content[0].type == "text" and m.usage.output_tokens > 0, str(m))

with an.messages.stream(model="gpt-mock", max_tokens=64, system="be brief",
                        messages=[{"role": "user", "content": "hi"}]) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
check("anthropic stream served by an openai model", bool(streamed) and final.usage.output_tokens > 0, streamed)

try:
    an.messages.create(model="claude-mock", max_tokens=64, messages=[])
    check("anthropic bad request raises BadRequestError", False)
except anthropic.BadRequestError as e:
    check("anthropic bad request raises BadRequestError", e.status_code == 400)

print(f"{6 - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
