"""Server metrics: counters and histograms in the Prometheus text format (hand-written; no extra
dependency), and the ASGI middleware that times every HTTP request. Rendered by ``GET /metrics``."""

from __future__ import annotations

import math
import threading
import time

from export.pipeline import STAGES

__all__ = ["Metrics", "MetricsMiddleware", "KNOWN_PATHS"]

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
            for k in STAGES + ("total",):
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
