"""HTTP API for :class:`serving.engine.NerEngine`: FastAPI + uvicorn, dynamic micro-batching.

Endpoints
    ``POST /v1/ner``   body (``Content-Type: application/json``), exactly one of
                       ``{"text": "..."}``            -> ``{"entities": [...]}``
                       ``{"texts": ["...", ...]}``    -> ``{"results": [{"entities": [...]}, ...]}``
                       ``{"words": [["w", ...], ...]}`` (pre-split) -> ``{"results": [...]}``
                       an entity: ``{"text", "label", "start", "end", "score", "word_start", "word_end"}``
    ``GET /healthz``   ``{"status": "ok"}`` (503 when the batching task is not running)
    ``GET /v1/model``  labels, manifest summary, precision, device, limits
    ``GET /metrics``   Prometheus text format (hand-written; no extra dependency)

Client mistakes get a 4xx JSON answer ``{"error": "..."}`` and never a 5xx: body larger than
``max_body_bytes`` (413, checked on Content-Length and while streaming, before parsing), too many
texts / characters (413), a Content-Type other than JSON or a Content-Encoding (415), invalid
UTF-8 / invalid JSON / JSON nested too deeply / lone surrogates (400), wrong types, missing or
unknown fields (422), unknown path (404), wrong method (405). ``503`` only when the queue is full.

Micro-batching: each request's documents go into a queue; one background task takes the first
waiting request, gathers more for at most ``max_wait_ms`` (or until ``max_batch`` texts), runs
the engine on all of them at once in a worker thread (the event loop stays free to accept and
parse requests meanwhile) and resolves every request's future. Requests that arrive while a batch
runs form the next batch, so batches grow, and throughput rises, with concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.engine import Document, NerEngine

__all__ = ["Settings", "create_app", "Metrics", "MicroBatcher", "ClientError", "parse_request"]

JSON_TYPES = ("application/json",)


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


class ClientError(Exception):
    """A bad request: HTTP ``status`` and a message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


class Overloaded(Exception):
    pass


# --------------------------------------------------------------------------- metrics
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
KNOWN_PATHS = ("/v1/ner", "/v1/model", "/healthz", "/metrics")


class _Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        i = 0
        while i < len(self.buckets) and v > self.buckets[i]:
            i += 1
        self.counts[i] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, acc = [], 0
        sep = "," if labels else ""
        for b, c in zip(self.buckets, self.counts):
            acc += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{_fmt(b)}"}} {acc}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        lab = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{lab} {_fmt(self.sum)}")
        out.append(f"{name}_count{lab} {self.count}")
        return out


def _fmt(v) -> str:
    if isinstance(v, int):
        return str(v)
    return repr(float(v)) if math.isfinite(v) else ("+Inf" if v > 0 else "-Inf")


class Metrics:
    """Counters and histograms, rendered in the Prometheus text exposition format 0.0.4."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.errors: dict[str, int] = {}
        self.latency = {p: _Histogram(LATENCY_BUCKETS) for p in KNOWN_PATHS}
        self.batch_size = _Histogram(BATCH_BUCKETS)
        self.batch_requests = _Histogram(BATCH_BUCKETS)
        self.texts_total = 0
        self.entities_total = 0
        self.stage_seconds: dict[str, float] = {}
        self.inflight = 0
        self.ner_inflight = 0   # POST /v1/ner requests between arrival and answer
        self.queued_texts = 0
        self.started = time.time()

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        path = path if path in KNOWN_PATHS else "other"
        with self._lock:
            key = (method if method in ("GET", "POST") else "other", path, int(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            if path in self.latency:
                self.latency[path].observe(seconds)

    def error(self, reason: str) -> None:
        with self._lock:
            self.errors[reason] = self.errors.get(reason, 0) + 1

    def observe_batch(self, texts: int, requests: int, timings: dict, entities: int) -> None:
        with self._lock:
            self.batch_size.observe(texts)
            self.batch_requests.observe(requests)
            self.texts_total += texts
            self.entities_total += entities
            for k in ("tokenize", "onnx", "viterbi", "confidence", "postprocess", "total"):
                self.stage_seconds[k] = self.stage_seconds.get(k, 0.0) + float(timings.get(k, 0.0))

    def render(self) -> str:
        with self._lock:
            L = []

            def head(name, typ, help_):
                L.append(f"# HELP {name} {help_}")
                L.append(f"# TYPE {name} {typ}")

            head("ner_requests_total", "counter", "HTTP requests by method, path and status code.")
            if not self.requests:
                L.append('ner_requests_total{method="POST",path="/v1/ner",status="200"} 0')
            for (m, p, s), c in sorted(self.requests.items()):
                L.append(f'ner_requests_total{{method="{m}",path="{p}",status="{s}"}} {c}')
            head("ner_errors_total", "counter", "Requests answered with an error, by reason.")
            if not self.errors:
                L.append('ner_errors_total{reason="none"} 0')
            for r, c in sorted(self.errors.items()):
                L.append(f'ner_errors_total{{reason="{r}"}} {c}')
            head("ner_request_duration_seconds", "histogram", "Request latency (server side), by path.")
            for p, h in self.latency.items():
                L += h.lines("ner_request_duration_seconds", f'path="{p}"')
            head("ner_batch_size", "histogram", "Texts per engine run (micro-batch).")
            L += self.batch_size.lines("ner_batch_size")
            head("ner_batch_requests", "histogram", "Requests merged into one engine run.")
            L += self.batch_requests.lines("ner_batch_requests")
            head("ner_texts_total", "counter", "Texts processed by the engine.")
            L.append(f"ner_texts_total {self.texts_total}")
            head("ner_entities_total", "counter", "Entities returned.")
            L.append(f"ner_entities_total {self.entities_total}")
            head("ner_engine_seconds_total", "counter", "Engine time by stage.")
            for k, v in sorted(self.stage_seconds.items()):
                L.append(f'ner_engine_seconds_total{{stage="{k}"}} {_fmt(v)}')
            head("ner_inflight_requests", "gauge", "Requests being processed.")
            L.append(f"ner_inflight_requests {self.inflight}")
            head("ner_queued_texts", "gauge", "Texts waiting for or in the engine.")
            L.append(f"ner_queued_texts {self.queued_texts}")
            head("ner_uptime_seconds", "gauge", "Seconds since the app was created.")
            L.append(f"ner_uptime_seconds {_fmt(time.time() - self.started)}")
            return "\n".join(L) + "\n"


class MetricsMiddleware:
    """Pure ASGI middleware: status code and latency of every HTTP request."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        ner = scope.get("path") == "/v1/ner"
        self.metrics.inflight += 1
        self.metrics.ner_inflight += ner
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.inflight -= 1
            self.metrics.ner_inflight -= ner
            self.metrics.observe_request(scope.get("method", ""), scope.get("path", ""), status[0],
                                         time.perf_counter() - t0)


# --------------------------------------------------------------------------- micro-batching
@dataclass
class _Job:
    docs: list
    future: asyncio.Future


class MicroBatcher:
    """Gathers concurrent requests into engine batches (see module doc)."""

    def __init__(self, engine: NerEngine, settings: Settings, metrics: Metrics):
        self.engine, self.settings, self.metrics = engine, settings, metrics
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ner-engine")
        self.pending = 0
        self.batches = 0
        self.waiting_requests = 0   # /v1/ner requests submitted and not answered yet

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run(), name="ner-micro-batcher")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def submit(self, docs: list) -> list:
        if not self.running:
            raise RuntimeError("the batching task is not running")
        if self.pending + len(docs) > self.settings.max_queue:
            raise Overloaded()
        fut = asyncio.get_running_loop().create_future()
        self.pending += len(docs)
        self.metrics.queued_texts = self.pending
        self.queue.put_nowait(_Job(docs, fut))
        self.waiting_requests += 1
        try:
            return await fut
        finally:
            self.waiting_requests -= 1

    @property
    def merges_requests(self) -> bool:
        """Whether requests are merged into one engine run (only when results cannot depend on it)."""
        return bool(getattr(self.engine, "batch_invariant", True))

    async def _collect(self, first: _Job):
        jobs, n = [first], len(first.docs)
        if not self.merges_requests:
            return jobs, None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.max_wait_ms / 1000.0
        carry = None
        while n < self.settings.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                timeout = deadline - loop.time()
                # no other request is being received or parsed: nobody to wait for
                if timeout <= 0 or self.metrics.ner_inflight <= self.waiting_requests:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
            if n + len(job.docs) > self.settings.max_batch:
                carry = job
                break
            jobs.append(job)
            n += len(job.docs)
        return jobs, carry

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry = None
        while True:
            first = carry if carry is not None else await self.queue.get()
            jobs, carry = await self._collect(first)
            n_all = sum(len(j.docs) for j in jobs)
            jobs = [j for j in jobs if not j.future.done()]  # e.g. the client went away
            docs = [d for j in jobs for d in j.docs]
            try:
                if docs:
                    results, timings = await loop.run_in_executor(
                        self.executor, self.engine.run_documents, docs, self.settings.max_batch)
                    self.batches += 1
                    self.metrics.observe_batch(len(docs), len(jobs), timings, sum(len(r) for r in results))
                    i = 0
                    for j in jobs:
                        if not j.future.done():
                            j.future.set_result(results[i:i + len(j.docs)])
                        i += len(j.docs)
            except asyncio.CancelledError:
                for j in jobs:
                    if not j.future.done():
                        j.future.cancel()
                raise
            except Exception as e:  # an engine failure fails this batch only; the loop goes on
                self.metrics.error("engine")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
            finally:
                self.pending -= n_all
                self.metrics.queued_texts = self.pending


# --------------------------------------------------------------------------- request parsing
def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _check_text(value, where: str, settings: Settings) -> str:
    if not isinstance(value, str):
        raise ClientError(422, f"{where} must be a string, got {_json_type(value)}", "wrong_type")
    if len(value) > settings.max_chars:
        raise ClientError(413, f"{where} has {len(value)} characters; the limit is {settings.max_chars}",
                          "too_many_chars")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ClientError(400, f"{where} contains invalid Unicode (a lone surrogate escape such as \\ud800)",
                          "invalid_unicode") from None
    return value


def _json_type(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(v), type(v).__name__)


def parse_request(body: bytes, settings: Settings) -> tuple[str, list[Document]]:
    """Validate a ``/v1/ner`` body. Returns ``(kind, documents)``; raises :class:`ClientError`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ClientError(400, f"body is not valid UTF-8 (invalid byte at offset {e.start})", "invalid_utf8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise ClientError(400, "empty body: send a JSON object such as {\"text\": \"...\"}", "invalid_json")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ClientError(400, "invalid JSON: nested too deeply", "invalid_json") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers with too many digits
        msg = "a number has too many digits" if "digits" in str(e) else str(e)[:200]
        raise ClientError(400, f"invalid JSON: {msg}", "invalid_json") from None
    if not isinstance(obj, dict):
        raise ClientError(422, f"the body must be a JSON object with one of \"text\", \"texts\" or \"words\", "
                               f"got {_json_type(obj)}", "wrong_type")
    fields = [k for k in ("text", "texts", "words") if k in obj]
    unknown = sorted(k for k in obj if k not in ("text", "texts", "words"))
    if unknown:
        raise ClientError(422, f"unknown field(s) {', '.join(map(repr, unknown[:5]))}: use one of "
                               f"\"text\", \"texts\" or \"words\"", "unknown_field")
    if len(fields) != 1:
        raise ClientError(422, "send exactly one of \"text\", \"texts\" or \"words\""
                          + (f" (got {', '.join(fields)})" if fields else ""), "missing_field")
    kind = fields[0]
    value = obj[kind]
    if kind == "text":
        return kind, [Document.from_text(_check_text(value, "text", settings))]
    if not isinstance(value, list):
        raise ClientError(422, f"{kind} must be an array, got {_json_type(value)}", "wrong_type")
    if not value:
        raise ClientError(422, f"{kind} must not be empty", "wrong_type")
    if len(value) > settings.max_texts:
        raise ClientError(413, f"{kind} has {len(value)} items; the limit is {settings.max_texts}", "too_many_texts")
    if kind == "texts":
        return kind, [Document.from_text(_check_text(v, f"texts[{i}]", settings)) for i, v in enumerate(value)]
    docs = []
    for i, ws in enumerate(value):
        if not isinstance(ws, list):
            raise ClientError(422, f"words[{i}] must be an array of strings, got {_json_type(ws)}", "wrong_type")
        chars = len(ws) - 1 if ws else 0
        for j, w in enumerate(ws):
            if not isinstance(w, str):
                raise ClientError(422, f"words[{i}][{j}] must be a string, got {_json_type(w)}", "wrong_type")
            chars += len(w)
        if chars > settings.max_chars:
            raise ClientError(413, f"words[{i}] has {chars} characters (joined with spaces); the limit is "
                                   f"{settings.max_chars}", "too_many_chars")
        for j, w in enumerate(ws):
            _check_text(w, f"words[{i}][{j}]", settings)
        docs.append(Document.from_words(ws))
    return kind, docs


# --------------------------------------------------------------------------- body reading
def _drain_limit(limit: int) -> int:
    """How much of a rejected body is still read (and discarded) so that the client gets the
    answer: closing a socket with unread data makes the kernel send RST, and the client may lose
    the response. Beyond this the connection is simply closed."""
    return max(4 * limit, 16 << 20)


async def _read_body(request, limit: int, drain_limit: int) -> tuple[bytes | None, int]:
    """Read the body; ``None`` once it exceeds ``limit`` (the rest is discarded, up to ``drain_limit``)."""
    body, total = bytearray(), 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        total += len(chunk)
        if body is not None:
            if total > limit:
                body = None
            else:
                body += chunk
        if not message.get("more_body", False) or total > drain_limit:
            break
    return (bytes(body) if body is not None else None), total


def _content_type_problem(headers) -> tuple[str, str] | None:
    ctype = headers.get("content-type", "")
    media, _, params = ctype.partition(";")
    media = media.strip().lower()
    if media not in JSON_TYPES and not (media.startswith("application/") and media.endswith("+json")):
        return f"Content-Type must be application/json, got {ctype[:100] or 'none'!r}", "content_type"
    charset = next((p.split("=", 1)[1].strip().strip('"').lower() for p in params.split(";")
                    if p.strip().lower().startswith("charset=")), "utf-8")
    if charset not in ("utf-8", "utf8"):
        return f"only UTF-8 JSON is accepted, got charset={charset[:40]!r}", "content_type"
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return f"Content-Encoding {encoding[:40]!r} is not supported; send plain JSON", "content_encoding"
    return None


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

    app = FastAPI(title="msd-ner serving", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
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

    @app.get("/healthz")
    async def healthz():
        if not batcher.running:
            return error(503, "the batching task is not running", "unhealthy")
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model():
        return {**engine.info(), "micro_batching": batcher.merges_requests, "limits": asdict(settings)}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/ner")
    async def ner(request: Request):
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        try:
            declared = int(declared) if declared is not None else None
        except ValueError:
            return error(400, "bad Content-Length header", "bad_header")
        if declared is not None and declared > limit:
            if declared <= _drain_limit(limit):
                await _read_body(request, 0, _drain_limit(limit))
            return error(413, f"body of {declared} bytes exceeds the limit of {limit} bytes", "body_too_large")
        problem = _content_type_problem(request.headers)
        if problem:
            await _read_body(request, 0, _drain_limit(limit))
            return error(415, problem[0], problem[1])
        body, size = await _read_body(request, limit, _drain_limit(limit))
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
