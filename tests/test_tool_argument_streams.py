"""End to end: an OpenAI-family channel streams tool arguments that are not one valid JSON object, and
an Anthropic SDK client streams the answer through the gateway without its parser raising."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from sdk_matrix import ScriptBook

from axonsim.unified import Message, Response, ToolCall, Usage
from server.testing import Stack

pytestmark = pytest.mark.timeout(120)

GW_KEY = "sk-gw-tool-args"
MODEL = "m-openai"
TOOLS: list[Any] = [{"name": "weather", "description": "Weather for a city",
                     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]


def call_answer(arguments: str) -> Response:
    return Response(id="", model="", message=Message(role="assistant", content=[], tool_calls=[
        ToolCall(id="call_1", name="weather", arguments=arguments)]),
        finish_reason="tool_calls", usage=Usage(prompt_tokens=10, completion_tokens=8, total_tokens=18))


@pytest.fixture(scope="module")
def book() -> ScriptBook:
    return ScriptBook()


@pytest.fixture(scope="module")
def client(book: ScriptBook) -> Iterator[anthropic.Anthropic]:
    fast = {"ttft": 0.001, "tokens_per_second": 100000, "output_tokens": 5}
    with Stack() as st:
        st.serve([{"name": "ch-openai", "type": "openai", "api_keys": ["sk-up-openai-0123"], "models": [MODEL],
                   "behavior": fast}],
                 gateway={"api_keys": [{"key": GW_KEY, "project": "tool-args"}]},
                 mock_kw={"ch-openai": {"script": book}})
        c = anthropic.Anthropic(base_url=st.gateways[0].url, api_key=GW_KEY, max_retries=0, timeout=20)
        yield c
        c.close()


@pytest.mark.parametrize("arguments, streamed, whole", [
    ("{'city': 'Paris'}", {}, {}),  # single quotes: Python's repr, not JSON
    ('{"city": "Paris", \'units\': \'c\'}', {"city": "Paris"}, {}),  # broken part way: the part before it
    # Leading spaces, the mock's whole first delta (it streams 7 characters a delta): the SDK raised on it
    ('       {"city": "Paris"}', {"city": "Paris"}, {"city": "Paris"}),
    ('["Paris"]', {}, {}),
    ('{"city": "Paris", "n": 1e400}', {"city": "Paris"}, {}),  # not a finite double: the SDK could not send it back
    ('{"city": "Paris"}', {"city": "Paris"}, {"city": "Paris"}),
])
def test_anthropic_sdk_streams_any_tool_arguments(client: anthropic.Anthropic, book: ScriptBook, arguments: str,
                                                  streamed: dict[str, Any], whole: dict[str, Any]) -> None:
    cid = book.add(call_answer(arguments))
    ask: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "tools": TOOLS,
                           "messages": [{"role": "user", "content": f"[case:{cid}] Weather?"}]}
    with client.messages.stream(**ask) as s:
        final = s.get_final_message()  # the SDK parses every input_json_delta as it comes
    blocks = [(b.type, b.id, b.name, b.input) for b in final.content if b.type == "tool_use"]
    assert blocks == [("tool_use", "call_1", "weather", streamed)]
    assert final.stop_reason == "tool_use"
    plain = client.messages.create(**ask)
    assert [(b.type, b.input) for b in plain.content] == [("tool_use", whole)]
