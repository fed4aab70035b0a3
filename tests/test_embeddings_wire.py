"""Embeddings wire formats (server.embeddings), both families and both roles, without a server; and the mock
provider's scripted stream rendering."""

from __future__ import annotations

import base64
import struct

import orjson
import pytest

from axonsim.capabilities import Needs, missing
from axonsim.config import Channel
from axonsim.formats import FormatError
from axonsim.unified import Message, ReasoningPart, Response, StreamAggregator, TextPart, ToolCall, Usage
from server import embeddings as emb
from server.mock_provider import embedding_vector, script_events


def test_openai_request_shapes() -> None:
    r = emb.parse_openai_request(b'{"model":"m","input":"hi"}')
    assert r.inputs == ["hi"] and r.encoding_format == "float" and r.source == "openai"
    r = emb.parse_openai_request(b'{"model":"m","input":[1,2,3],"dimensions":8,"encoding_format":"base64","x":1}')
    assert r.inputs == [[1, 2, 3]] and r.dimensions == 8 and r.extra == {"x": 1}
    r = emb.parse_openai_request(b'{"model":"m","input":["a",[4,5]]}')
    assert r.inputs == ["a", [4, 5]]


@pytest.mark.parametrize(("body", "param"), [
    (b'{"input":"x"}', "model"),
    (b'{"model":"m"}', "input"),
    (b'{"model":"m","input":[]}', "input"),
    (b'{"model":"m","input":["a",""]}', "input[1]"),
    (b'{"model":"m","input":["a",{}]}', "input[1]"),
    (b'{"model":"m","input":"a","dimensions":0}', "dimensions"),
    (b'{"model":"m","input":"a","encoding_format":"int8"}', "encoding_format"),
])
def test_openai_request_errors_name_the_field(body: bytes, param: str) -> None:
    with pytest.raises(FormatError) as e:
        emb.parse_openai_request(body)
    assert e.value.param == param and e.value.status == 400


def test_base64_is_little_endian_float32() -> None:
    req = emb.EmbedRequest(model="m", inputs=["a"], source="openai", encoding_format="base64")
    out = orjson.loads(emb.render_openai_response(emb.EmbedResult([[0.5, -1.25]], 3, 3), req))
    raw = base64.b64decode(out["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -1.25)
    assert out["usage"] == {"prompt_tokens": 3, "total_tokens": 3} and out["model"] == "m"
    # and the gateway reads either encoding back from an OpenAI channel
    back = emb.parse_openai_response(orjson.dumps(out), 1)
    assert back.vectors == [[0.5, -1.25]] and back.prompt_tokens == 3


def test_openai_response_errors_are_the_upstreams() -> None:
    for body in (b"[]", b'{"data":[]}', b'{"data":[{"index":5,"embedding":[1]}]}', b'{"data":[{"embedding":"!!"}]}'):
        with pytest.raises(FormatError) as e:
            emb.parse_openai_response(body, 1)
        assert e.value.status == 502


def test_gemini_requests_both_methods_and_spellings() -> None:
    one = emb.parse_gemini_request(b'{"content":{"parts":[{"text":"a"},{"text":"b"}]},"task_type":"RETRIEVAL_QUERY",'
                                   b'"outputDimensionality":4}', "models/g", "embedContent")
    assert (one.model, one.inputs, one.task_type, one.dimensions, one.batch) == ("g", ["a b"], "RETRIEVAL_QUERY",
                                                                               4, False)
    batch = emb.parse_gemini_request(b'{"requests":[{"model":"models/g","content":{"parts":[{"text":"x"}]}},'
                                     b'{"content":{"parts":[{"text":"y"}]}}]}', "g", "batchEmbedContents")
    assert batch.inputs == ["x", "y"] and batch.batch
    # each request of a batch has its own options, as in the Gemini API
    mixed = emb.parse_gemini_request(b'{"requests":[{"content":{"parts":[{"text":"x"}]},"outputDimensionality":4,'
                                     b'"taskType":"RETRIEVAL_QUERY"},{"content":{"parts":[{"text":"y"}]},'
                                     b'"taskType":"RETRIEVAL_DOCUMENT","title":"Doc"}]}', "g", "batchEmbedContents")
    assert mixed.per_item == [(4, "RETRIEVAL_QUERY", None), (None, "RETRIEVAL_DOCUMENT", "Doc")]
    [(_, body, n)] = emb.build_gemini_request(mixed, "g")
    assert n == 2 and [{k: r.get(k) for k in ("outputDimensionality", "taskType", "title")}
                       for r in orjson.loads(body)["requests"]] == [
        {"outputDimensionality": 4, "taskType": "RETRIEVAL_QUERY", "title": None},
        {"outputDimensionality": None, "taskType": "RETRIEVAL_DOCUMENT", "title": "Doc"}]
    assert emb.needs_of(mixed).embed_types == frozenset({"gemini"})  # one `dimensions` for OpenAI: not there
    same_dims = emb.parse_gemini_request(b'{"requests":[{"content":{"parts":[{"text":"x"}]},"taskType":"A"},'
                                         b'{"content":{"parts":[{"text":"y"}]},"taskType":"B"}]}', "g",
                                         "batchEmbedContents")
    assert emb.needs_of(same_dims) == emb.EMBEDDINGS  # taskType only reaches Gemini channels anyway
    with pytest.raises(FormatError) as e:
        emb.parse_gemini_request(b'{"content":{"parts":[{"fileData":{}}]}}', "g", "embedContent")
    assert e.value.param == "content.parts[0]"


def test_cross_family_requests() -> None:
    oreq = emb.parse_openai_request(b'{"model":"m","input":["a","b"],"dimensions":3,"user":"u","extra_thing":1}')
    [(path, body, _)] = emb.build_gemini_request(oreq, "models/up")
    assert path == "/models/up:batchEmbedContents"
    sent = orjson.loads(body)
    assert sent == {"requests": [{"model": "models/up", "content": {"parts": [{"text": t}]}, "outputDimensionality": 3}
                                 for t in ("a", "b")]}  # no user, no OpenAI-only fields
    greq = emb.parse_gemini_request(b'{"content":{"parts":[{"text":"a"}]},"taskType":"CLUSTERING","title":"T"}', "g",
                                    "embedContent")
    path, body = emb.build_openai_request(greq, "up")
    assert path == "/embeddings"
    assert orjson.loads(body) == {"model": "up", "input": ["a"], "encoding_format": "float"}
    [(path, body, _)] = emb.build_gemini_request(greq, "g")
    assert path == "/models/g:embedContent"
    assert orjson.loads(body)["taskType"] == "CLUSTERING"
    tokens = emb.parse_openai_request(b'{"model":"m","input":[1,2]}')
    with pytest.raises(FormatError):
        emb.build_gemini_request(tokens, "g")
    assert emb.needs_of(tokens).embed_types == frozenset({"openai"})  # routing keeps it from Gemini channels
    # Gemini takes at most 100 requests per batch: more are several calls, in order
    many = emb.parse_openai_request(orjson.dumps({"model": "m", "input": [f"t{i}" for i in range(250)]}))
    calls = emb.build_gemini_request(many, "g")
    assert [n for _, _, n in calls] == [100, 100, 50]
    assert [r["content"]["parts"][0]["text"] for _, b, _ in calls for r in orjson.loads(b)["requests"]] == many.inputs


def test_gemini_response_shapes() -> None:
    single = emb.EmbedRequest(model="g", inputs=["a"], source="gemini", batch=False)
    out = orjson.loads(emb.render_gemini_response(emb.EmbedResult([[1.0, 0.0]], 2, 2), single))
    assert out == {"embedding": {"values": [1.0, 0.0]}, "usageMetadata": {"promptTokenCount": 2, "totalTokenCount": 2}}
    assert emb.parse_gemini_response(orjson.dumps(out), 1).vectors == [[1.0, 0.0]]
    res = emb.parse_gemini_response(b'{"embeddings":[{"values":[1]},{"values":[2]}]}', 2)
    assert res.vectors == [[1.0], [2.0]] and res.prompt_tokens == 0  # no usage: the driver estimates it
    with pytest.raises(FormatError):
        emb.parse_gemini_response(b'{"embeddings":[{"values":[1]}]}', 2)


def test_only_openai_and_gemini_channels_embed() -> None:
    need = Needs(embeddings=True)
    assert need
    for t, ok in (("openai", True), ("gemini", True), ("anthropic", False), ("openai_responses", False)):
        ch = Channel(name="c", type=t, models=["m"])  # type: ignore[arg-type]
        assert (missing(ch, need) is None) is ok


def test_mock_vectors_are_deterministic_unit_vectors() -> None:
    v = embedding_vector("m", "text", 24)
    assert len(v) == 24 and abs(sum(x * x for x in v) - 1.0) < 1e-9
    assert v == embedding_vector("m", "text", 24) and v != embedding_vector("m2", "text", 24)


def test_scripted_stream_aggregates_to_the_script() -> None:
    resp = Response(id="r1", model="m", message=Message(
        role="assistant", content=[ReasoningPart(text="thinking it over", signature="sig", signature_provider="anthropic"),
                                   TextPart(text="an answer of some length")],
        tool_calls=[ToolCall(id="c1", name="f", arguments='{"a": [1, 2, 3], "b": "long enough"}')]),
        finish_reason="tool_calls", usage=Usage(prompt_tokens=5, completion_tokens=9, total_tokens=14))
    evs = script_events(resp, chunk=4)
    assert sum(1 for e in evs if e.type == "text") > 1  # small deltas: clients must reassemble
    agg = StreamAggregator()
    for e in evs:
        agg.add(e)
    assert agg.response() == resp
