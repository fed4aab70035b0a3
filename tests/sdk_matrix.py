"""Helpers for the SDK matrix (tests/test_e2e_sdk_matrix.py): scripted answers, and one adapter per client API
that drives its official SDK and reduces what the SDK reconstructed to one comparable shape.

Every adapter answers the same three questions, each in its own family's idiom:
    ask(model, case, variant, stream)      one request (system prompt, user prompt, tools or reasoning)
    follow_up(model, case, first, stream)  the tool round trip's second turn: the history as the SDK
                                           returned it, plus the tool results in the family's form
and returns a Seen: text, reasoning (and its signature), tool calls (name, parsed arguments, id),
finish reason and usage, normalised to the unified vocabulary so one assertion serves every pair.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai
from google import genai
from google.genai import types as gt

from axonsim.formats.signatures import export_signature
from axonsim.unified import Message, ReasoningPart, Request, Response, TextPart, ToolCall, Usage

SYSTEM = "Be brief."
PROMPT = "What is the weather and the local time in Paris?"

WEATHER = {"name": "get_weather", "description": "Current weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                          "required": ["city"]}}
TIME = {"name": "get_time", "description": "Local time in a time zone.",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}
TOOLS = [WEATHER, TIME]
TOOL_RESULTS = {"get_weather": {"temp_c": 21, "sky": "sunny"}, "get_time": {"time": "14:05"}}

# Channel type -> the family whose reasoning signature it issues (None: OpenAI Chat carries none).
SIGNATURES: dict[str, tuple[str, str] | None] = {
    "openai": None,
    "openai_responses": ("gAAAAABmock-encrypted-reasoning==", "openai_responses"),
    "anthropic": ("EqQBCkYIBxgCKkBmockAnthropicSignature", "anthropic"),
    "gemini": ("c2lnbmF0dXJlLWZyb20tZ2VtaW5p", "gemini"),
}

# Channel type -> the tool-call ids it issues (Anthropic's look like toolu_...).
CALL_IDS = {"anthropic": ("toolu_01Weather", "toolu_02Time")}

# Client API -> the family name the formats use (signature export, Request.source).
CLIENT_FAMILY = {"chat": "openai_chat", "responses": "openai_responses", "anthropic": "anthropic",
                 "genai-v1beta": "gemini", "genai-v1": "gemini"}
# Families whose usage carries reasoning tokens / a total.
REASONING_TOKENS = {"openai_chat", "openai_responses", "gemini"}
CHANNEL_FAMILY = {"openai": "openai_chat", "openai_responses": "openai_responses", "anthropic": "anthropic",
                  "gemini": "gemini"}

_CASE = re.compile(r"\[case:(\w+)\]")


# --------------------------------------------------------------------------------------------------
# Scripts


def text_answer() -> Response:
    # Non-ASCII, quotes and a backslash: every renderer and SDK must keep them byte for byte. And the
    # characters str.splitlines breaks at beyond \r and \n (U+2028, U+2029, U+0085): raw in a Gemini
    # stream, they split an event in two for google-genai.
    text = 'Paris is the capital of France — «quoted», "json" \\ ✓.\u2028Line\u2029Para\x85Next.'
    return Response(id="", model="", message=Message(role="assistant", content=[TextPart(text=text)]),
                    finish_reason="stop",
                    usage=Usage(prompt_tokens=17, completion_tokens=11, total_tokens=28, cached_tokens=4))


def tool_call_answer(channel: str) -> Response:
    ids = CALL_IDS.get(channel, ("call_weather_1", "call_time_2"))
    calls = [ToolCall(id=ids[0], name="get_weather", arguments='{"city": "Paris", "unit": "celsius"}'),
             ToolCall(id=ids[1], name="get_time", arguments='{"tz": "Europe/Paris"}')]
    return Response(id="", model="", message=Message(role="assistant", content=[TextPart(text="Let me check both.")],
                                                     tool_calls=calls),
                    finish_reason="tool_calls", usage=Usage(prompt_tokens=40, completion_tokens=30, total_tokens=70))


def after_tools_answer() -> Response:
    return Response(id="", model="", message=Message(role="assistant",
                                                     content=[TextPart(text="Sunny, 21 °C; it is 14:05 in Paris.")]),
                    finish_reason="stop", usage=Usage(prompt_tokens=90, completion_tokens=14, total_tokens=104))


def reasoning_answer(channel: str) -> Response:
    sig = SIGNATURES[channel]
    part = ReasoningPart(text="The user asks for the answer. It is well known: forty-two.",
                         signature=sig[0] if sig else None, signature_provider=sig[1] if sig else None)
    return Response(id="", model="", message=Message(role="assistant",
                                                     content=[part, TextPart(text="The answer is 42.")]),
                    finish_reason="stop",
                    usage=Usage(prompt_tokens=12, completion_tokens=40, total_tokens=52, reasoning_tokens=28))


def truncated_answer() -> Response:
    return Response(id="", model="", message=Message(role="assistant", content=[TextPart(text="The list goes on and")]),
                    finish_reason="length", usage=Usage(prompt_tokens=9, completion_tokens=5, total_tokens=14))


def reasoning_tool_answer(channel: str) -> Response:
    """Thinking, then a tool call: the signature must go back to its issuer with the history."""
    sig = SIGNATURES[channel]
    ids = CALL_IDS.get(channel, ("call_weather_1", "call_time_2"))
    part = ReasoningPart(text="I need the weather tool for Paris.", signature=sig[0] if sig else None,
                         signature_provider=sig[1] if sig else None)
    return Response(id="", model="", message=Message(role="assistant", content=[part], tool_calls=[
        ToolCall(id=ids[0], name="get_weather", arguments='{"city": "Paris"}')]),
        finish_reason="tool_calls", usage=Usage(prompt_tokens=30, completion_tokens=25, total_tokens=55,
                                                reasoning_tokens=10))


class ScriptBook:
    """The mock providers' `script`: a test registers its answers (one per assistant turn) under a
    fresh case id and puts `[case:ID]` in its prompt; requests without one get the filler answer."""

    def __init__(self) -> None:
        self.cases: dict[str, list[Response]] = {}
        self._ids = itertools.count(1)

    def add(self, *answers: Response) -> str:
        cid = f"c{next(self._ids)}"
        self.cases[cid] = list(answers)
        return cid

    def __call__(self, req: Request) -> Response | None:
        cid = case_of(req)
        if cid is None or cid not in self.cases:
            return None
        answers = self.cases[cid]
        turn = sum(1 for m in req.messages if m.role == "assistant")
        if "continuationToken" in req.extra_body:
            turn += 1  # Gemini resuming an answer it cut short (CONTINUATION): the rest is the next answer
        return answers[min(turn, len(answers) - 1)]


def case_of(req: Request) -> str | None:
    for m in req.messages:
        if m.role == "user":
            hit = _CASE.search(m.text())
            if hit:
                return hit.group(1)
    return None


# --------------------------------------------------------------------------------------------------
# What a client saw


@dataclass
class Seen:
    text: str = ""
    reasoning: str = ""
    signature: str | None = None
    calls: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)
    finish: str | None = None
    prompt: int | None = None
    completion: int | None = None
    total: int | None = None
    cached: int | None = None
    reasoning_tokens: int | None = None
    state: Any = None  # what follow_up needs (the SDK's own objects)


def expected_usage(script: Response, client: str, channel: str) -> dict[str, int | None]:
    """The usage a client of `client` must see for `script` sent by a `channel` channel; None where
    one of the two families cannot carry the field (the documented lossy list)."""
    u = script.usage
    assert u is not None
    cf, hf = CLIENT_FAMILY[client], CHANNEL_FAMILY[channel]
    # A client family with the field sees 0 when the channel's family could not say it.
    reasoning = None if cf not in REASONING_TOKENS else u.reasoning_tokens if hf in REASONING_TOKENS else 0
    return {"prompt": u.prompt_tokens, "completion": u.completion_tokens,
            "total": u.total_tokens if cf != "anthropic" else None, "cached": u.cached_tokens,
            "reasoning_tokens": reasoning}


def seen_usage(seen: Seen) -> dict[str, int | None]:
    return {"prompt": seen.prompt, "completion": seen.completion, "total": seen.total, "cached": seen.cached,
            "reasoning_tokens": seen.reasoning_tokens}


def expected_signature(script: Response, client: str) -> str | None:
    """What the client must be shown of the channel's signature: the issuer's own token to its own
    family, wrapped with its provenance for another family; nothing for OpenAI Chat (no field)."""
    cf = CLIENT_FAMILY[client]
    if cf == "openai_chat":
        return None
    for p in script.message.content:
        if isinstance(p, ReasoningPart) and p.signature:
            return export_signature(p.signature, p.signature_provider, cf)
    return None


def prompt(cid: str) -> str:
    return f"[case:{cid}] {PROMPT}"


def _args(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        out: dict[str, Any] = json.loads(raw) if raw else {}
        return out
    return dict(raw or {})


# --------------------------------------------------------------------------------------------------
# OpenAI Chat Completions


class ChatClient:
    name = "chat"

    def __init__(self, url: str, key: str) -> None:
        self.sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)

    def close(self) -> None:
        self.sdk.close()

    def _kw(self, variant: str) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if "tools" in variant:
            kw["tools"] = [{"type": "function", "function": t} for t in TOOLS]
        if "reasoning" in variant:
            kw["reasoning_effort"] = "medium"
        return kw

    def _send(self, model: str, messages: list[dict[str, Any]], kw: dict[str, Any], stream: bool) -> Seen:
        if stream:
            with self.sdk.chat.completions.stream(model=model, messages=messages,  # type: ignore[arg-type]
                                                  stream_options={"include_usage": True}, **kw) as s:
                reasoning = []
                for ev in s:
                    # The SDK's accumulator keeps only documented fields: reasoning_content (DeepSeek,
                    # vLLM convention) is read from the chunks as a client of those providers does.
                    if ev.type == "chunk" and ev.chunk.choices:
                        extra = ev.chunk.choices[0].delta.model_extra or {}
                        if extra.get("reasoning_content"):
                            reasoning.append(extra["reasoning_content"])
                r: Any
                try:
                    r = s.get_final_completion()
                except openai.LengthFinishReasonError as exc:
                    # The helper refuses to *parse* a truncated answer, and hands the completion over.
                    r = exc.completion
            seen = self._seen(r)
            seen.reasoning = "".join(reasoning)
        else:
            r = self.sdk.chat.completions.create(model=model, messages=messages, **kw)  # type: ignore[arg-type]
            seen = self._seen(r)
            seen.reasoning = (r.choices[0].message.model_extra or {}).get("reasoning_content") or ""
        seen.state = (messages, r)
        return seen

    def _seen(self, r: Any) -> Seen:
        msg = r.choices[0].message
        u = r.usage
        return Seen(text=msg.content or "",
                    calls=[(c.function.name, _args(c.function.arguments), c.id) for c in msg.tool_calls or []],
                    finish=r.choices[0].finish_reason,
                    prompt=u.prompt_tokens if u else None, completion=u.completion_tokens if u else None,
                    total=u.total_tokens if u else None,
                    cached=(u.prompt_tokens_details.cached_tokens or 0) if u and u.prompt_tokens_details else 0,
                    reasoning_tokens=(u.completion_tokens_details.reasoning_tokens or 0)
                    if u and u.completion_tokens_details else 0)

    def ask(self, model: str, cid: str, variant: str, stream: bool) -> Seen:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt(cid)}]
        return self._send(model, messages, self._kw(variant), stream)

    def follow_up(self, model: str, first: Seen, stream: bool, variant: str = "tools") -> Seen:
        messages, r = first.state
        msg = r.choices[0].message
        history = [*messages, {"role": "assistant", "content": msg.content,
                               "tool_calls": [{"id": c.id, "type": "function",
                                               "function": {"name": c.function.name,
                                                            "arguments": c.function.arguments}}
                                              for c in msg.tool_calls]}]
        for c in msg.tool_calls:
            history.append({"role": "tool", "tool_call_id": c.id,
                            "content": json.dumps(TOOL_RESULTS[c.function.name])})
        return self._send(model, history, self._kw(variant), stream)


# --------------------------------------------------------------------------------------------------
# OpenAI Responses


class ResponsesClient:
    name = "responses"

    def __init__(self, url: str, key: str) -> None:
        self.sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)

    def close(self) -> None:
        self.sdk.close()

    def _kw(self, variant: str) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if "tools" in variant:
            kw["tools"] = [{"type": "function", **t} for t in TOOLS]
        if "reasoning" in variant:
            kw["reasoning"] = {"effort": "medium", "summary": "auto"}
            kw["include"] = ["reasoning.encrypted_content"]
        return kw

    def _send(self, model: str, items: list[Any], kw: dict[str, Any], stream: bool) -> Seen:
        if stream:
            with self.sdk.responses.stream(model=model, instructions=SYSTEM, input=items, store=False, **kw) as s:
                final = None
                for ev in s:
                    # The helper's get_final_response wants response.completed; a truncated answer
                    # ends with response.incomplete, whose response the helper fills in the same way.
                    if ev.type in ("response.completed", "response.incomplete"):
                        final = ev.response
            assert final is not None, "the stream had no terminal response event"
            r = final
        else:
            r = self.sdk.responses.create(model=model, instructions=SYSTEM, input=items, store=False, **kw)
        reasoning: list[str] = []
        sig: str | None = None
        calls: list[tuple[str, dict[str, Any], str | None]] = []
        for it in r.output:
            if it.type == "reasoning":
                reasoning.extend(s.text for s in it.summary)
                reasoning.extend(c.text for c in it.content or [])
                sig = it.encrypted_content or sig
            elif it.type == "function_call":
                calls.append((it.name, _args(it.arguments), it.call_id))
        u = r.usage
        finish = "stop"
        if r.status == "incomplete":
            finish = "length" if r.incomplete_details and r.incomplete_details.reason == "max_output_tokens" \
                else "content_filter"
        elif calls:
            finish = "tool_calls"
        return Seen(text=r.output_text, reasoning="".join(reasoning), signature=sig, calls=calls, finish=finish,
                    prompt=u.input_tokens if u else None, completion=u.output_tokens if u else None,
                    total=u.total_tokens if u else None,
                    cached=u.input_tokens_details.cached_tokens if u else None,
                    reasoning_tokens=u.output_tokens_details.reasoning_tokens if u else None,
                    state=(items, r))

    def ask(self, model: str, cid: str, variant: str, stream: bool) -> Seen:
        return self._send(model, [{"role": "user", "content": prompt(cid)}], self._kw(variant), stream)

    def follow_up(self, model: str, first: Seen, stream: bool, variant: str = "tools") -> Seen:
        items, r = first.state
        history = [*items, *[it.model_dump(exclude_none=True, mode="json") for it in r.output]]
        for it in r.output:
            if it.type == "function_call":
                history.append({"type": "function_call_output", "call_id": it.call_id,
                                "output": json.dumps(TOOL_RESULTS[it.name])})
        return self._send(model, history, self._kw(variant), stream)


# --------------------------------------------------------------------------------------------------
# Anthropic Messages


class AnthropicClient:
    name = "anthropic"

    def __init__(self, url: str, key: str) -> None:
        self.sdk = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=20)

    def close(self) -> None:
        self.sdk.close()

    def _kw(self, variant: str) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_tokens": 1024}
        if "tools" in variant:
            kw["tools"] = [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
                           for t in TOOLS]
        if "reasoning" in variant:
            kw["max_tokens"] = 4096  # must exceed the thinking budget
            kw["thinking"] = {"type": "enabled", "budget_tokens": 2048}
        return kw

    def _send(self, model: str, messages: list[Any], kw: dict[str, Any], stream: bool) -> Seen:
        if stream:
            with self.sdk.messages.stream(model=model, system=SYSTEM, messages=messages, **kw) as s:
                m = s.get_final_message()
        else:
            m = self.sdk.messages.create(model=model, system=SYSTEM, messages=messages, **kw)
        text: list[str] = []
        reasoning: list[str] = []
        sig: str | None = None
        calls: list[tuple[str, dict[str, Any], str | None]] = []
        for b in m.content:
            if b.type == "text":
                text.append(b.text)
            elif b.type == "thinking":
                reasoning.append(b.thinking)
                sig = b.signature or sig
            elif b.type == "tool_use":
                calls.append((b.name, _args(b.input), b.id))
        finish = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls",
                  "max_tokens": "length"}.get(m.stop_reason or "", m.stop_reason)
        u = m.usage
        cached = u.cache_read_input_tokens or 0
        prompt_tokens = u.input_tokens + cached + (u.cache_creation_input_tokens or 0)
        return Seen(text="".join(text), reasoning="".join(reasoning), signature=sig, calls=calls, finish=finish,
                    prompt=prompt_tokens, completion=u.output_tokens, total=None, cached=cached,
                    reasoning_tokens=None, state=(messages, m))

    def ask(self, model: str, cid: str, variant: str, stream: bool) -> Seen:
        return self._send(model, [{"role": "user", "content": prompt(cid)}], self._kw(variant), stream)

    def follow_up(self, model: str, first: Seen, stream: bool, variant: str = "tools") -> Seen:
        messages, m = first.state
        history = [*messages, {"role": "assistant",
                               "content": [b.model_dump(exclude_none=True, mode="json") for b in m.content]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": b.id,
                                                 "content": json.dumps(TOOL_RESULTS[b.name])}
                                                for b in m.content if b.type == "tool_use"]}]
        return self._send(model, history, self._kw(variant), stream)


# --------------------------------------------------------------------------------------------------
# google-genai


class GenaiClient:
    def __init__(self, url: str, key: str, api_version: str | None) -> None:
        # api_version None: the SDK's default (v1 in google-genai 3.x); retries: one attempt only.
        opts = gt.HttpOptions(base_url=url, api_version=api_version, timeout=20_000,
                              retry_options=gt.HttpRetryOptions(attempts=1))
        self.name = f"genai-{api_version or 'v1'}"
        self.sdk = genai.Client(api_key=key, http_options=opts)

    def close(self) -> None:
        self.sdk.close()

    def _config(self, variant: str) -> gt.GenerateContentConfig:
        cfg = gt.GenerateContentConfig(system_instruction=SYSTEM,
                                       automatic_function_calling=gt.AutomaticFunctionCallingConfig(disable=True))
        if "tools" in variant:
            cfg.tools = [gt.Tool(function_declarations=[
                gt.FunctionDeclaration(name=t["name"], description=t["description"], parameters_json_schema=t["parameters"])
                for t in TOOLS])]
        if "reasoning" in variant:
            cfg.thinking_config = gt.ThinkingConfig(include_thoughts=True, thinking_budget=2048)
        return cfg

    def _send(self, model: str, contents: list[gt.Content], variant: str, stream: bool) -> Seen:
        cfg = self._config(variant)
        if stream:
            parts: list[gt.Part] = []
            finish = usage = None
            for chunk in self.sdk.models.generate_content_stream(model=model, contents=contents, config=cfg):
                if chunk.candidates:
                    cand = chunk.candidates[0]
                    if cand.content and cand.content.parts:
                        parts.extend(cand.content.parts)
                    finish = cand.finish_reason or finish
                usage = chunk.usage_metadata or usage
        else:
            r = self.sdk.models.generate_content(model=model, contents=contents, config=cfg)
            assert r.candidates
            cand = r.candidates[0]
            parts = list(cand.content.parts or []) if cand.content else []
            finish, usage = cand.finish_reason, r.usage_metadata
        text: list[str] = []
        reasoning: list[str] = []
        sig: bytes | str | None = None
        calls: list[tuple[str, dict[str, Any], str | None]] = []
        for p in parts:
            if p.thought_signature:
                sig = p.thought_signature
            if p.function_call is not None:
                calls.append((p.function_call.name or "", _args(p.function_call.args), p.function_call.id))
            elif p.text is not None:
                (reasoning if p.thought else text).append(p.text)
        fin = None
        if finish is not None:
            fin = {"STOP": "stop", "MAX_TOKENS": "length"}.get(finish.value, finish.value)
            if fin == "stop" and calls:
                fin = "tool_calls"  # Gemini says STOP when it calls a function
        thoughts = (usage.thoughts_token_count or 0) if usage else 0
        return Seen(text="".join(text), reasoning="".join(reasoning),
                    # the SDK decodes thoughtSignature's base64: encode it back to compare wire values
                    signature=base64.b64encode(sig).decode() if isinstance(sig, bytes) else sig, calls=calls,
                    finish=fin,
                    prompt=usage.prompt_token_count if usage else None,
                    completion=(usage.candidates_token_count or 0) + thoughts if usage else None,
                    total=usage.total_token_count if usage else None,
                    cached=(usage.cached_content_token_count or 0) if usage else None,
                    reasoning_tokens=thoughts, state=(contents, gt.Content(role="model", parts=parts)))

    def ask(self, model: str, cid: str, variant: str, stream: bool) -> Seen:
        return self._send(model, [gt.Content(role="user", parts=[gt.Part(text=prompt(cid))])], variant, stream)

    def follow_up(self, model: str, first: Seen, stream: bool, variant: str = "tools") -> Seen:
        contents, answer = first.state
        results = [gt.Part(function_response=gt.FunctionResponse(id=p.function_call.id, name=p.function_call.name,
                                                                 response=TOOL_RESULTS[p.function_call.name or ""]))
                   for p in answer.parts or [] if p.function_call is not None]
        return self._send(model, [*contents, answer, gt.Content(role="user", parts=results)], variant, stream)


Client = ChatClient | ResponsesClient | AnthropicClient | GenaiClient


def make_client(name: str, url: str, key: str) -> Client:
    if name == "chat":
        return ChatClient(url, key)
    if name == "responses":
        return ResponsesClient(url, key)
    if name == "anthropic":
        return AnthropicClient(url, key)
    return GenaiClient(url, key, "v1beta" if name == "genai-v1beta" else None)
