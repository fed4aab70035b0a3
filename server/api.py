"""The FastAPI side of the gateway: health, the model list, metrics, the admin API, OpenAPI docs — everything off the hot path.

The client-API POST routes never reach this app (server.app answers them in raw ASGI); they are
declared here only so /docs lists them, with a handler that says so if ever reached.

Mounted here:
    GET  /health, GET /v1/models
    GET  /metrics                                Prometheus exposition (server.metrics), no auth
    /admin/...                                   server.admin (admin keys), plus the channel tests:
    POST /admin/channels/{name}/test             one small real request to the channel (server.probes)
    POST /admin/test                             the same for every channel, concurrently
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.admin import BAD_PARAM, NOT_FOUND, AdminContext, AdminError, admin_router, query_params
from server.metrics import Metrics
from server.models_api import gemini_model_list, is_gemini_client, models_router
from server.probes import run_test
from server.proxy import Proxy
from server.store.scrub import Scrubber, secrets_from_config


def metrics_router(metrics: Metrics, path: str = "/metrics") -> APIRouter:
    """A FastAPI router serving GET `path` from `metrics`. Unauthenticated, as Prometheus expects:
    keep it off a public listener if that matters."""
    router = APIRouter()

    # async on purpose: it then runs on the event-loop thread, the only one that changes the numbers.
    # (Annotations here must name only module-level or builtin types: FastAPI resolves them as strings.)
    @router.get(path, summary="Prometheus metrics (text exposition format, or OpenMetrics if asked)",
                response_class=Response, tags=["metrics"],
                responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "The exposition"}})
    async def prometheus_metrics(request: Request) -> Any:
        # (the header read here, not declared as a parameter: FastAPI then documented a 422 never sent)
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return router


def _openai_error(status: int, message: str, type_: str, code: str | None = None,
                  headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": code}}, status_code=status,
                        headers=headers)


# google.rpc names for the statuses the fallback answers with.
_GOOGLE_STATUS = {404: "NOT_FOUND", 405: "UNIMPLEMENTED", 400: "INVALID_ARGUMENT"}
# Gemini's model methods (models/{model}:{method}); under /v1/models an OpenAI model id may hold colons
# too (fine-tuned models: ft:gpt-4o-mini:org::id), so only these names make a path Gemini's there.
_GEMINI_METHODS = frozenset({
    "generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents",
    "batchGenerateContent", "asyncBatchEmbedContent", "predict", "predictLongRunning", "generateAnswer",
    "generateMessage", "generateText", "embedText", "batchEmbedText", "countMessageTokens", "countTextTokens"})


def _gemini_method_path(path: str) -> bool:
    """Whether `path` belongs to the Gemini API: anything under /v1beta/ or /gemini/, or a Gemini
    model method elsewhere (…/models/{model}:{method}, as under /v1/)."""
    if path.startswith(("/v1beta/", "/gemini/")):
        return True
    if "/models/" not in path:
        return False
    last = path.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    return path.startswith("/v1beta/") or last.rsplit(":", 1)[-1] in _GEMINI_METHODS


async def _until_shutdown(aw: Awaitable[Any]) -> Any:
    """Await a channel test; if the server's shutdown deadline cancels it, the caller gets a 503 in
    the admin API's shape (uvicorn answered a plain-text 500 and logged a traceback)."""
    try:
        return await aw
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        raise AdminError(503, "the gateway shut down before the test finished") from None


def _route_error(path: str, status: int, message: str, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error for a request no route serves, in the shape of the API family its path belongs to:
    the client's SDK then reads it as it reads every other error of that API. `headers`: a 405's
    Allow, which HTTP requires of it."""
    if path.startswith(("/v1/messages", "/anthropic/")):
        type_ = "not_found_error" if status == 404 else "invalid_request_error"
        return JSONResponse({"type": "error", "error": {"type": type_, "message": message}}, status_code=status,
                            headers=headers)
    if _gemini_method_path(path):
        return JSONResponse({"error": {"code": status, "message": message,
                                       "status": _GOOGLE_STATUS.get(status, "INVALID_ARGUMENT")}}, status_code=status,
                            headers=headers)
    return _openai_error(status, message, "invalid_request_error", code, headers=headers)


class ChannelTestOut(BaseModel):
    channel: str
    model: str = Field(description="the upstream model tested (the channel's first unless `model` was given)")
    key: str | None = Field(None, description="the upstream key's name (never the key)")
    stream: bool
    ok: bool
    status: int | None = Field(None, description="the upstream's HTTP status (0: no HTTP answer)")
    latency: float | None = Field(None, description="seconds to the end of the answer")
    ttft: float | None = Field(None, description="seconds to the first content (the whole answer when not streaming)")
    error: str | None = None
    error_kind: str | None = None
    reply: str | None = Field(None, description="the start of the answer")


class ChannelTestsOut(BaseModel):
    results: list[ChannelTestOut]


_TEST_TIMEOUT = Query(30.0, gt=0, le=600, description="seconds the test may take")
_TEST_STREAM = Query(True, description="stream the answer (TTFT is then the provider's first token)")


def build_api(proxy: Proxy | Callable[[], Proxy]) -> FastAPI:
    """`proxy` or a function returning the current one (so a config reload is seen here too)."""
    if isinstance(proxy, Proxy):
        fixed = proxy

        def current() -> Proxy:
            return fixed
    else:
        current = proxy
    api = FastAPI(
        title="AxonSim gateway",
        version="0.1.0",
        summary="An LLM API gateway: OpenAI, Anthropic and Gemini wire formats with failover and load balancing.",
        # The app is mounted behind server.app's dispatcher, which owns the lifespan.
    )

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        if exc.status_code == 404 or (exc.status_code == 405 and request.method == "POST" and _gemini_method_path(path)):
            # A POST to models/{model}:{method} that the gateway does not serve (countTokens, ...)
            # meets the model-info GET route: it is an unknown method, 404 as Google answers it.
            return _route_error(path, 404, f"no route for {request.method} {path}", "not_found")
        if exc.status_code == 405:
            # A Gemini model method (models/{model}:{method}) meets the model-info GET route here, but
            # what the path serves is POST (a GET of it is the 404 above: not a model's info either).
            allow = {"Allow": "POST"} if _gemini_method_path(path) else exc.headers
            return _route_error(path, 405, f"method {request.method} is not allowed on {path}", "method_not_allowed",
                                headers=allow)
        return _route_error(path, exc.status_code, str(exc.detail))

    @api.get("/health", summary="Readiness: 200 once the gateway serves traffic")
    async def health() -> Any:
        if not current().ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ok"}

    @api.get("/v1/models", summary="The model names clients may request (OpenAI list shape)")
    async def models(request: Request) -> Any:
        p = current()
        if is_gemini_client(request.scope["headers"], request.scope["query_string"]):  # google-genai's default /v1/
            return gemini_model_list(p, request)
        if p.auth.authenticate(request.scope["headers"], request.scope["query_string"]) is None:
            return _openai_error(401, "missing or invalid gateway API key", "authentication_error", "invalid_api_key")
        return {"object": "list",
                "data": [{"id": m, "object": "model", "created": 0, "owned_by": "axonsim"}
                         for m in p.config.model_names()]}

    api.include_router(models_router(current))  # Gemini's model list, /v1/models/{model}
    api.include_router(metrics_router(current().metrics))
    admin = admin_router(AdminContext(router=lambda: current().router, store=lambda: current().store,
                                      reload=lambda: current().reload_all(), now=lambda: current().clock.now(),
                                      find=lambda rid: current().find(rid),
                                      switches_local=lambda: current().switches_local,
                                      shared_state=lambda: current().shared_state,
                                      started_config=lambda: current().started_config))

    def scrubbed(p: Proxy, body: BaseModel) -> JSONResponse:
        # The answer quotes upstream error messages: every configured secret is masked, as in the admin API.
        return JSONResponse(Scrubber(secrets_from_config(p.config)).json(body.model_dump()))

    # Routes added to the admin router inherit its guard: admin key, errors in the admin shape.
    @admin.post("/channels/{name:path}/test", response_model=ChannelTestOut, responses={**BAD_PARAM, **NOT_FOUND},
                summary="Send a small real request to one channel (AxonHub's default test prompt) and report status, "
                "latency and TTFT; the result feeds the channel's state like real traffic")
    async def test_channel(request: Request, name: str, stream: bool = _TEST_STREAM, timeout: float = _TEST_TIMEOUT,
                           model: str | None = Query(None, description="an upstream model of the channel")) -> Any:
        query_params(request, ("stream", "timeout", "model"))  # unknown or repeated ones refused
        p = current()
        rt = p.rt
        st = rt.router.by_name.get(name)
        if st is None:
            raise AdminError(404, f"no channel named {name!r}", "name")
        if model is not None and model not in st.channel.models:
            raise AdminError(400, f"channel {name!r} has no model {model!r}; it has {', '.join(st.channel.models)}",
                             "model")
        res = await _until_shutdown(run_test(rt, st, stream=stream, timeout=timeout, model=model))
        return scrubbed(p, ChannelTestOut(**res))

    @admin.post("/test", response_model=ChannelTestsOut, responses=BAD_PARAM,
                summary="Test every channel at once (see /admin/channels/{name}/test)")
    async def test_all(request: Request, stream: bool = _TEST_STREAM, timeout: float = _TEST_TIMEOUT) -> Any:
        query_params(request, ("stream", "timeout"))
        p = current()
        rt = p.rt
        got = await _until_shutdown(asyncio.gather(*(run_test(rt, st, stream=stream, timeout=timeout)
                                                     for st in rt.router.states)))
        return scrubbed(p, ChannelTestsOut(results=[ChannelTestOut(**r) for r in got]))

    api.include_router(admin)

    async def _not_here(request: Request) -> Any:  # only reachable if the dispatcher is bypassed
        return _openai_error(500, "this route is served by the gateway's ASGI handler", "server_error")

    routes = current().routes
    for path in routes.paths():
        if not path.startswith("/v1") and not path.startswith("/anthropic"):
            continue  # Gemini's methods are a pattern: listed one by one below
        streams = "" if path.endswith("/embeddings") else " (streaming with \"stream\": true)"
        api.add_api_route(path, _not_here, methods=["POST"], tags=["client API"],
                          summary=f"Client API: POST {path}{streams}; auth with the gateway key")
    for method, what in _GEMINI_DOCS:
        if routes.match(f"/v1beta/models/m:{method}") is not None:
            api.add_api_route(f"/v1beta/models/{{model}}:{method}", _not_here, methods=["POST"], tags=["client API"],
                              summary=f"Client API, Gemini: {what}; also under /v1/, /gemini/v1beta/, "
                              "/gemini/v1/ and /gemini/; auth with the gateway key (x-goog-api-key or ?key=)")
    return api


_GEMINI_DOCS = [  # the Gemini methods served, as the OpenAPI document lists them
    ("generateContent", "one answer"),
    ("streamGenerateContent", "a stream: SSE with ?alt=sse, else one JSON array written as it grows"),
    ("embedContent", "one embedding"),
    ("batchEmbedContents", "a batch of embeddings"),
]
