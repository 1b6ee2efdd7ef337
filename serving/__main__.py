"""Serve an ONNX export over HTTP.

    python -m serving EXPORT_DIR [--host 127.0.0.1] [--port 8000] [--precision fp32|int8|int8-dynamic]
                                 [--device cpu|cuda] [--threads N] [--max-batch 32] [--max-wait-ms 5]
                                 [--max-texts 64] [--max-chars 10000] [--max-body-bytes 1000000]

Binds 127.0.0.1 unless ``--host`` says otherwise (``--host 0.0.0.0`` exposes the server to the
network: do it on purpose, e.g. inside a container). See :mod:`serving.server` for the API.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from export.format import PRECISIONS

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m serving", description="NER over HTTP with ONNX Runtime")
    ap.add_argument("export_dir", metavar="EXPORT_DIR", help="directory written by `python -m export.onnx`")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--precision", choices=list(PRECISIONS), default="fp32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    ap.add_argument("--max-batch", type=int, default=32, help="texts per micro-batch")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    ap.add_argument("--max-texts", type=int, default=64, help="texts per request")
    ap.add_argument("--max-chars", type=int, default=10_000, help="characters per text")
    ap.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body size limit")
    ap.add_argument("--max-queue", type=int, default=4096, help="texts waiting before answering 503")
    ap.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    ap.add_argument("--access-log", action="store_true", help="log every request")
    return ap


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from serving.engine import EngineError, NerEngine
    from serving.server import Settings, create_app

    if not 0 <= args.port <= 65535:
        print(f"error: bad port {args.port}", file=sys.stderr)
        return 2
    try:
        settings = Settings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_texts=args.max_texts,
                            max_chars=args.max_chars, max_body_bytes=args.max_body_bytes,
                            max_queue=args.max_queue).validate()
        engine = NerEngine.from_dir(args.export_dir, device=args.device, threads=args.threads,
                                    precision=args.precision)
        engine.predict(["Warm-up sentence for Paris ."])  # first-run allocations before the first request
    except (EngineError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    if not _is_loopback(args.host):
        print(f"warning: binding {args.host}: the server is reachable from other machines", file=sys.stderr)
    app = create_app(engine, settings)
    print(f"serving {args.export_dir} ({args.precision}, {args.device}) on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    if not engine.batch_invariant:
        print(f"note: {args.precision} is not batch-invariant: each text runs alone and requests are not "
              "micro-batched (use --precision int8 for a batch-invariant int8 model)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
