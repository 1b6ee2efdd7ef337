"""Teacher and student side by side in the browser.

    python -m demo [--teacher runs/teacher] [--student runs/student/onnx] [--host 127.0.0.1]
                   [--port 7860] [--precision fp32|int8|int8-dynamic] [--threads N] [--max-chars 10000]

``--teacher``: a PyTorch run directory / checkpoint (decoded with its CRF in PyTorch) or an ONNX
export directory. ``--student``: an ONNX export directory, served by the same engine as
``python -m serving``; ``--precision`` picks its fp32, int8 (static) or int8-dynamic graph (an ONNX teacher stays fp32).
Defaults are what ``make run`` and ``python -m export.onnx runs/student`` write. Binds 127.0.0.1
unless ``--host`` says otherwise; no share link, no telemetry, nothing fetched from the internet.
"""

from __future__ import annotations

import argparse
import os
import sys

from export.format import PRECISIONS

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m demo", description="NER demo: teacher vs distilled student")
    ap.add_argument("--teacher", default="runs/teacher",
                    help="PyTorch run dir / checkpoint, or an ONNX export dir (default runs/teacher)")
    ap.add_argument("--student", default="runs/student/onnx", help="ONNX export dir (default runs/student/onnx)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help="the student's ONNX graph")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads per model (default: all cores)")
    ap.add_argument("--max-chars", type=int, default=10_000, help="longest accepted text (default 10000)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from demo.models import ModelError, check_model_path, load_model

    if not 0 <= args.port <= 65535:
        print(f"error: bad port {args.port}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.max_chars < 1:
        print(f"error: --max-chars must be >= 1, got {args.max_chars}", file=sys.stderr)
        return 2
    # both paths first (cheap): every missing model is reported before anything is loaded
    problems = []
    for path, role in ((args.teacher, "teacher"), (args.student, "student")):
        try:
            check_model_path(path, role)
        except ModelError as e:
            problems.append(f"error: {e}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    try:
        teacher = load_model(args.teacher, "teacher", precision="fp32", threads=args.threads)
        student = load_model(args.student, "student", precision=args.precision, threads=args.threads)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from demo.app import build_app, launch

    for model in (teacher, student):  # the first call is slow (allocations): keep it out of the page's latency
        model.predict("Warm-up in Paris .")

    app = build_app(teacher, student, max_chars=args.max_chars)
    print(f"teacher: {teacher.path} ({teacher.describe()})\nstudent: {student.path} ({student.describe()})",
          flush=True)
    try:
        launch(app, host=args.host, port=args.port)
    except OSError as e:  # port in use, cannot bind
        print(f"error: cannot serve on {args.host}:{args.port}: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
