"""The hardware limit: this CPU's sustained GEMM rate through ONNX Runtime, and the encoder's FLOPs.

    python -m benchmarks.gemm [--export DIR | --hidden 384 --intermediate 1536] [--tokens 1024]
                              [--threads N] [--seconds 3] [--out benchmarks/results/gemm]

A one-node ONNX graph is timed with ONNX Runtime itself, with the engine's session options
(:func:`export.runtime.open_session`: same intra-op threads, spinning off):

* ``fp32``: ``MatMul`` of a float input ``(tokens, hidden)`` by a constant ``(hidden, intermediate)``;
* ``int8``: ``MatMulInteger`` of a uint8 input by a constant int8 weight (int32 result): the
  integer GEMM that static and dynamic int8 graphs reduce to (u8 x s8, as ONNX Runtime prefers on x86).

The shape is the encoder's largest: tokens x hidden times hidden x intermediate (the feed-forward
up-projection). After a warm-up the graph runs for ``--seconds``; the rate is ``2 * tokens * hidden
* intermediate`` operations over the median run time (``best`` is also recorded).

FLOPs of the encoder (:func:`encoder_flops`; a multiply-add counts 2; matrix products only), for a
sequence of ``n`` sub-tokens (special tokens included, no padding), ``h`` = hidden size, ``i`` =
intermediate size, ``L`` layers, ``C`` labels::

    per layer:  queries, keys, values 3 * 2*n*h*h  + scores Q K^T 2*n*n*h  + probabilities x V 2*n*n*h
                + output projection 2*n*h*h        + feed-forward 2*n*h*i + 2*n*i*h
              = 8*n*h^2 + 4*n^2*h + 4*n*h*i
    total:      L * (8*n*h^2 + 4*n^2*h + 4*n*h*i) + 2*n*h*C   (classifier)

Embedding lookups, layer norms, softmax, GELU and bias additions (O(n*h) each) are not counted.
The fraction of the limit an engine reaches is ``sum of encoder_flops over the windows it ran /
its wall time / the GEMM rate`` (fp32 points against the fp32 rate, int8 points against int8).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "int8")


# --------------------------------------------------------------------------- FLOPs
def _shape(config: dict) -> tuple[int, int, int, int]:
    try:
        layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"encoder config without num_hidden_layers / hidden_size: {e}") from None
    inter = int(config.get("intermediate_size") or 4 * hidden)
    labels = int(config.get("num_labels") or len(config.get("id2label") or {}) or 0)
    return layers, hidden, inter, labels


def encoder_flops(config: dict, lengths) -> int:
    """Matrix-product FLOPs of the encoder + classifier over sequences of ``lengths`` sub-tokens
    (see the module doc for the formula). ``config``: a Hugging Face config dict."""
    L, h, i, C = _shape(config)
    total = 0
    for n in lengths:
        n = int(n)
        total += L * (8 * n * h * h + 4 * n * n * h + 4 * n * h * i) + 2 * n * h * C
    return total


def flops_per_token(config: dict, length: int) -> float:
    """FLOPs per sub-token of a sequence of ``length`` sub-tokens."""
    return encoder_flops(config, [length]) / max(int(length), 1)


def read_config(export_or_config: str | os.PathLike) -> dict:
    """``config.json`` of an export / checkpoint directory, or a config file."""
    p = Path(export_or_config)
    p = p / "config.json" if p.is_dir() else p
    if not p.is_file():
        raise ValueError(f"{p}: no such config file")
    return json.loads(p.read_text())


# --------------------------------------------------------------------------- GEMM
def gemm_model(tokens: int, k: int, n: int, precision: str, seed: int = 0):
    """A one-node ONNX graph ``Y = A @ W`` (``A``: input ``(tokens, k)``, ``W``: constant ``(k, n)``):
    :func:`export.runtime.matmul_model` with random weights (int8: ``A`` uint8 with zero point 128)."""
    import onnx

    from export.runtime import matmul_model

    rng = np.random.default_rng(seed)
    if precision == "fp32":
        model = matmul_model(rng.standard_normal((k, n)).astype(np.float32), tokens, name="gemm_fp32")
    elif precision == "int8":
        model = matmul_model(rng.integers(-127, 128, (k, n), dtype=np.int8), tokens, 128, name="gemm_int8")
    else:
        raise ValueError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    onnx.checker.check_model(model)
    return model


def measure_gemm(tokens: int, k: int, n: int, precision: str, threads: int | None = None, seconds: float = 3.0,
                 warmup: int = 3) -> dict:
    """Sustained rate of ``(tokens, k) x (k, n)`` in ``precision`` with the engine's session options."""
    from export.runtime import open_session

    if min(tokens, k, n) < 1 or seconds <= 0:
        raise ValueError("tokens, k, n must be >= 1 and seconds > 0")
    model = gemm_model(tokens, k, n, precision)
    sess = open_session(model.SerializeToString(), threads)
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((tokens, k)).astype(np.float32) if precision == "fp32"
         else rng.integers(0, 256, (tokens, k), dtype=np.uint8))
    feed = {"A": a}
    for _ in range(warmup):
        sess.run(None, feed)
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    ops = 2.0 * tokens * k * n
    med = statistics.median(times)
    return {"precision": precision, "op": "MatMul" if precision == "fp32" else "MatMulInteger (u8 x s8 -> s32)",
            "shape": [tokens, k, n], "threads": threads, "runs": len(times), "median_s": med, "best_s": min(times),
            "gflops": ops / med / 1e9, "gflops_best": ops / min(times) / 1e9}


def measure_limits(config: dict, threads: int | None = None, tokens: int = 1024, seconds: float = 3.0,
                   precisions=PRECISIONS) -> dict:
    """GEMM rate of the encoder's feed-forward shape, per precision."""
    _, h, i, _ = _shape(config)
    return {p: measure_gemm(tokens, h, i, p, threads, seconds) for p in precisions}


def limit_for(precision: str) -> str:
    """Which GEMM rate a serving precision is compared with."""
    return "fp32" if precision == "fp32" else "int8"


# --------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gemm", description=__doc__.splitlines()[0])
    ap.add_argument("--export", default=None, help="export or checkpoint directory: take the shape from its config.json")
    ap.add_argument("--hidden", type=int, default=384, help="hidden size (default: all-MiniLM-L6-v2's 384)")
    ap.add_argument("--intermediate", type=int, default=None, help="intermediate size (default 4 x hidden)")
    ap.add_argument("--tokens", type=int, default=1024, help="rows of the input (sub-tokens of a batch)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per precision")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gemm"),
                    help="output path prefix (.json and .md are appended)")
    args = ap.parse_args(argv)
    if args.tokens < 1 or args.threads < 1 or args.seconds <= 0 or args.hidden < 1:
        print("error: --tokens, --threads, --hidden must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    if args.export:
        try:
            config = read_config(args.export)
            _shape(config)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        config = {"hidden_size": args.hidden, "intermediate_size": args.intermediate or 4 * args.hidden,
                  "num_hidden_layers": 1}
    from benchmarks.common import machine

    limits = measure_limits(config, args.threads, args.tokens, args.seconds)
    report = {"command": " ".join(["python -m benchmarks.gemm"] + [shlex.quote(a) for a in argv]),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "limits": limits}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# GEMM limit (ONNX Runtime, one-node graph)", "", f"- command: `{report['command']}`",
             f"- date: {report['date']}", f"- machine: {report['machine']['cpu']}, {report['machine']['cpu_count']} CPUs, "
             f"onnxruntime {report['machine']['onnxruntime']}, load average at start "
             f"{report['machine']['loadavg_at_start']}", "",
             "| precision | op | tokens x K x N | threads | runs | median ms | GFLOP/s (median) | GFLOP/s (best) |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for p, r in limits.items():
        lines.append(f"| {p} | {r['op']} | {' x '.join(map(str, r['shape']))} | {r['threads']} | {r['runs']} | "
                     f"{1000 * r['median_s']:.3f} | {r['gflops']:.1f} | {r['gflops_best']:.1f} |")
        print(f"{p}: {r['gflops']:.1f} GFLOP/s (median of {r['runs']} runs, shape {r['shape']}, {r['threads']} threads)")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}.json, {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
