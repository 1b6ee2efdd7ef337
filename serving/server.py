"""HTTP API for :class:`serving.engine.NerEngine`: FastAPI + uvicorn, dynamic micro-batching.

Endpoints
    ``POST /v1/ner``   body (``Content-Type: application/json``), exactly one of
                       ``{"text": "..."}``            -> ``{"entities": [...]}``
                       ``{"texts": ["...", ...]}``    -> ``{"results": [{"entities": [...]}, ...]}``
                       ``{"words": [["w", ...], ...]}`` (pre-split) -> ``{"results": [...]}``
                       an entity: ``{"text", "label", "start", "end", "score", "word_start", "word_end"}``
    ``GET /healthz``   ``{"status": "ok"}`` (503 when the batching task is not running)
    ``GET /v1/model``  labels, manifest summary, precision, device, limits
    ``GET /metrics``   Prometheus text format (:mod:`serving.metrics`)
    ``GET /openapi.json``  the contract above as OpenAPI 3 (no interactive docs: they would load
                       their scripts from a CDN)

Client mistakes get a 4xx JSON answer ``{"error": "..."}`` and never a 5xx: body larger than
``max_body_bytes`` (413, checked on Content-Length and while streaming, before parsing), too many
texts / characters (413), a Content-Type other than JSON or a Content-Encoding (415), invalid
UTF-8 / invalid JSON / JSON nested too deeply / lone surrogates (400), wrong types, missing or
unknown fields (422), unknown path (404), wrong method (405). ``503`` only when the queue is full.
Reading and parsing the body: :mod:`serving.requests`; micro-batching: :mod:`serving.batching`.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Union

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.batching import MicroBatcher, Overloaded
from serving.engine import NerEngine
from serving.metrics import Metrics, MetricsMiddleware
from serving.requests import (ClientError, Entities, ErrorBody, Results, content_type_problem, drain_limit,
                              parse_request, read_body, request_models)

__all__ = ["Settings", "create_app", "Metrics", "MicroBatcher", "ClientError", "parse_request"]


@dataclass
class Settings:
    max_batch: int = 32            # texts per engine run (micro-batch)
    max_wait_ms: float = 5.0       # how long the first request of a batch waits for company
    max_texts: int = 64            # texts per request
    max_chars: int = 10_000        # characters per text (pre-split: of " ".join(words))
    max_body_bytes: int = 1_000_000
    max_queue: int = 4096          # texts waiting for the engine before 503

    def validate(self) -> "Settings":
        for k in ("max_batch", "max_texts", "max_chars", "max_body_bytes", "max_queue"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not 0 <= float(self.max_wait_ms) <= 10_000:
            raise ValueError(f"max_wait_ms must be in 0..10000, got {self.max_wait_ms}")
        return self


# --------------------------------------------------------------------------- the contract
ERRORS = {  # the error answers of POST /v1/ner, for the OpenAPI document (body: ErrorBody)
    400: "Body not UTF-8, not JSON (NaN, over-long integers, nesting too deep), empty; lone surrogates in "
         "strings; bad Content-Length header.",
    413: "Body over max_body_bytes (checked on Content-Length and while reading, before parsing), more than "
         "max_texts texts, a text over max_chars characters.",
    415: "Content-Type not application/json (or a charset other than UTF-8), any Content-Encoding.",
    422: "Not an object; none or several of text / texts / words; unknown fields; wrong types; empty lists.",
    500: "The engine failed on this request's batch (the server goes on).",
    503: "Too many texts waiting (max_queue); retry after the Retry-After header's seconds.",
}
DESCRIPTION = ("Named-entity recognition with an ONNX student model. POST /v1/ner takes exactly one of the three "
               "request shapes; the limits in this document are the server's settings. Every error, on any path "
               "(404 unknown path, 405 wrong method included), has the body {\"error\": \"...\"}.")


def openapi(app: FastAPI, settings: Settings) -> dict:
    """The OpenAPI document: FastAPI's, plus the request body of ``POST /v1/ner`` (hand-parsed, so FastAPI
    does not see it) as one of :func:`serving.requests.request_models` under ``settings``' limits."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=DESCRIPTION, routes=app.routes)
        shapes = TypeAdapter(Union[tuple(request_models(settings))]).json_schema(
            ref_template="#/components/schemas/{model}")
        doc.setdefault("components", {}).setdefault("schemas", {}).update(shapes["$defs"])
        doc["paths"]["/v1/ner"]["post"]["requestBody"] = {
            "required": True, "content": {"application/json": {"schema": {"oneOf": shapes["anyOf"]}}}}
        app.openapi_schema = doc
    return app.openapi_schema


# --------------------------------------------------------------------------- the app
def create_app(engine: NerEngine, settings: Settings | None = None):
    """The FastAPI application (``app.state``: ``engine``, ``settings``, ``metrics``, ``batcher``)."""
    settings = (settings or Settings()).validate()
    metrics = Metrics()
    batcher = MicroBatcher(engine, settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    # the OpenAPI document only: Swagger UI and ReDoc would load their scripts from a CDN
    app = FastAPI(title="msd-ner serving", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.openapi = lambda: openapi(app, settings)
    app.state.engine, app.state.settings, app.state.metrics, app.state.batcher = engine, settings, metrics, batcher
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def error(status: int, message: str, reason: str, headers=None):
        metrics.error(reason)
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        msg = {404: f"no such endpoint: {request.url.path}",
               405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code,
                                                                                      str(exc.detail))
        return error(exc.status_code, msg, reason, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request, exc):
        return error(500, f"internal server error: {type(exc).__name__}", "internal")

    @app.get("/healthz", responses={503: {"model": ErrorBody, "description": "The batching task is not running."}})
    async def healthz():
        if not batcher.running:
            return error(503, "the batching task is not running", "unhealthy")
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model():
        return {**engine.info(), "micro_batching": batcher.merges_requests, "limits": asdict(settings)}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/ner", response_model=None, responses={
        200: {"model": Union[Entities, Results], "description": "Entities for a text, Results for texts or words."},
        **{status: {"model": ErrorBody, "description": why} for status, why in ERRORS.items()}})
    async def ner(request: Request):
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        try:
            declared = int(declared) if declared is not None else None
        except ValueError:
            return error(400, "bad Content-Length header", "bad_header")
        if declared is not None and declared > limit:
            if declared <= drain_limit(limit):
                await read_body(request, 0, drain_limit(limit))
            return error(413, f"body of {declared} bytes exceeds the limit of {limit} bytes", "body_too_large")
        problem = content_type_problem(request.headers)
        if problem:
            await read_body(request, 0, drain_limit(limit))
            return error(415, problem[0], problem[1])
        body, size = await read_body(request, limit, drain_limit(limit))
        if body is None:
            return error(413, f"body exceeds the limit of {limit} bytes", "body_too_large")
        try:
            kind, docs = parse_request(body, settings)
        except ClientError as e:
            return error(e.status, e.message, e.reason)
        try:
            results = await batcher.submit(docs)
        except Overloaded:
            return error(503, "server overloaded: too many texts waiting; retry later", "overloaded",
                         {"Retry-After": "1"})
        if kind == "text":
            return JSONResponse({"entities": [e.to_dict() for e in results[0]]})
        return JSONResponse({"results": [{"entities": [e.to_dict() for e in r]} for r in results]})

    return app
