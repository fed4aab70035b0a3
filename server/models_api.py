"""Model lists in Gemini's shape (`GET /v1beta/models`, `models/{model}`), beside the OpenAI list server.api serves at /v1/models.

google-genai lists models with `GET {base}/{api_version}/models` and reads one with
`GET .../models/{model}`. On /v1beta/ and under /gemini/ the answer is always Gemini-shaped. On
/v1/ (google-genai 3.x's default version, which OpenAI clients use too) it is Gemini-shaped only when
the caller is a Gemini client: it sent its key the Gemini way (`x-goog-api-key`, `?key=`) or the SDK's
`x-goog-api-client` header, and no `Authorization` header; everyone else gets OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from axonsim.capabilities import EMBEDDING_CHANNELS
from axonsim.config import Config
from axonsim.formats import gemini
from axonsim.unified import Error, ErrorKind

if TYPE_CHECKING:
    from server.proxy import Proxy

GEMINI_PREFIXES = ("/v1beta", "/gemini/v1beta", "/gemini/v1", "/gemini")
DEFAULT_PAGE_SIZE = 50  # Gemini's own default and maximum
MAX_PAGE_SIZE = 1000


def is_gemini_client(headers: Iterable[tuple[bytes, bytes]], query_string: bytes) -> bool:
    goog = False
    for name, _ in headers:
        if name == b"authorization":
            return False
        if name == b"x-goog-api-key" or name == b"x-goog-api-client":
            goog = True
    return goog or b"key=" in query_string


def _error(kind: ErrorKind, status: int, message: str, param: str | None = None) -> Response:
    err = Error(kind=kind, status=status, message=message, param=param)
    return Response(gemini.render_error(err), status_code=gemini.error_status(err), media_type="application/json")


def gemini_model(config: Config, name: str) -> dict[str, Any] | None:
    """`name` as Gemini's Model resource; None if no enabled channel serves it."""
    serving = [ch for ch in config.channels if ch.enabled and ch.serves(name) is not None]
    if not serving:
        return None
    methods = ["generateContent", "streamGenerateContent"]
    if any(ch.type in EMBEDDING_CHANNELS for ch in serving):
        methods += ["embedContent", "batchEmbedContents"]
    out: dict[str, Any] = {"name": f"models/{name}", "baseModelId": name, "version": "axonsim", "displayName": name,
                           "description": "served through the AxonSim gateway", "supportedGenerationMethods": methods}
    windows = [ch.capabilities.context_window for ch in serving if ch.capabilities.context_window is not None]
    if windows:
        out["inputTokenLimit"] = min(windows)  # what every serving channel can take
    return out


def gemini_model_list(p: Proxy, request: Request) -> Response:
    """The Gemini ListModels answer for `request` (auth checked here), paged by pageSize/pageToken."""
    if p.auth.authenticate(request.scope["headers"], request.scope["query_string"]) is None:
        return _error(ErrorKind.AUTHENTICATION, 401, "missing or invalid gateway API key")
    q = request.query_params
    try:
        size = int(q.get("pageSize") or q.get("page_size") or DEFAULT_PAGE_SIZE)
        start = int(q.get("pageToken") or q.get("page_token") or 0)
    except ValueError:
        return _error(ErrorKind.INVALID_REQUEST, 400, "pageSize and pageToken must be the values this API returned",
                      "pageToken")
    if size <= 0:
        size = DEFAULT_PAGE_SIZE
    size = min(size, MAX_PAGE_SIZE)
    names = p.config.model_names()
    if start < 0 or start > len(names):
        return _error(ErrorKind.INVALID_REQUEST, 400, "pageToken is not one this API returned", "pageToken")
    page = [m for m in (gemini_model(p.config, n) for n in names[start:start + size]) if m is not None]
    body: dict[str, Any] = {"models": page}
    if start + size < len(names):
        body["nextPageToken"] = str(start + size)  # opaque to clients; an offset is enough for a config's list
    return JSONResponse(body)


def gemini_model_get(p: Proxy, request: Request, model: str) -> Response:
    if p.auth.authenticate(request.scope["headers"], request.scope["query_string"]) is None:
        return _error(ErrorKind.AUTHENTICATION, 401, "missing or invalid gateway API key")
    name = model.removeprefix("models/")
    m = gemini_model(p.config, name)
    if m is None:
        return _error(ErrorKind.NOT_FOUND, 404, f"the model models/{name} does not exist", "name")
    return JSONResponse(m)


def _openai_model(p: Proxy, request: Request, model: str) -> Response:
    """OpenAI's retrieve-model answer (GET /v1/models/{model}) for non-Gemini callers."""
    if p.auth.authenticate(request.scope["headers"], request.scope["query_string"]) is None:
        return JSONResponse({"error": {"message": "missing or invalid gateway API key", "type": "authentication_error",
                                       "param": None, "code": "invalid_api_key"}}, status_code=401)
    if model not in p.config.model_names():
        return JSONResponse({"error": {"message": f"the model {model!r} does not exist", "type": "invalid_request_error",
                                       "param": "model", "code": "model_not_found"}}, status_code=404)
    return JSONResponse({"id": model, "object": "model", "created": 0, "owned_by": "axonsim"})


def models_router(current: Callable[[], Proxy]) -> APIRouter:
    """GET routes for Gemini's model list and model resource, and /v1/models/{model} for both families.
    (GET /v1/models itself stays in server.api, which asks `is_gemini_client` first.)"""
    # Errors come in the client's API shape (OpenAI's, or Google's for Gemini clients); declaring them
    # also keeps FastAPI from documenting its 422, which a path of any text never gets.
    router = APIRouter(tags=["models"], responses={"4XX": {"description": "An error in the client's API shape "
                                                                          "(OpenAI's, or Google's for Gemini clients)"}})

    async def list_models(request: Request) -> Response:
        return gemini_model_list(current(), request)

    async def get_model(request: Request, model: str) -> Response:
        return gemini_model_get(current(), request, model)

    for prefix in GEMINI_PREFIXES:
        router.add_api_route(f"{prefix}/models", list_models, methods=["GET"],
                             summary="The model names clients may request (Gemini list shape)")
        router.add_api_route(f"{prefix}/models/{{model:path}}", get_model, methods=["GET"],
                             summary="One model (Gemini shape)")

    @router.get("/v1/models/{model:path}", summary="One model: Gemini shape for Gemini clients, else OpenAI's")
    async def v1_model(request: Request, model: str) -> Response:
        p = current()
        if is_gemini_client(request.scope["headers"], request.scope["query_string"]):
            return gemini_model_get(p, request, model)
        return _openai_model(p, request, model)

    return router
