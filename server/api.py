"""The FastAPI side of the gateway: health, the model list, OpenAPI docs — everything off the hot path.

The client-API POST routes never reach this app (server.app answers them in raw ASGI); they are
declared here only so /docs lists them, with a handler that says so if ever reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.models_api import gemini_model_list, is_gemini_client, models_router
from server.proxy import Proxy


def _openai_error(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": code}}, status_code=status)


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
        if exc.status_code == 404:
            return _openai_error(404, f"no route for {request.method} {request.url.path}", "invalid_request_error",
                                 "not_found")
        if exc.status_code == 405:
            return _openai_error(405, f"method {request.method} is not allowed on {request.url.path}",
                                 "invalid_request_error", "method_not_allowed")
        return _openai_error(exc.status_code, str(exc.detail), "invalid_request_error")

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

    for path in current().routes.paths():
        if not path.startswith("/v1") and not path.startswith("/anthropic"):
            continue

        async def _not_here(request: Request) -> Any:  # only reachable if the dispatcher is bypassed
            return _openai_error(500, "this route is served by the gateway's ASGI handler", "server_error")

        api.add_api_route(path, _not_here, methods=["POST"], summary=f"Client API: POST {path} (streaming with "
                          "\"stream\": true); auth with the gateway key", tags=["client API"])
    return api
