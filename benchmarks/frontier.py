"""The speed / accuracy frontier: students of every depth (and the teacher) in fp32 and int8.

    python -m benchmarks.frontier --runs 'runs/full/conll2003/*' [--teacher RUN] [--depths 1,2,3,4]
                                  [--dataset conll2003] [--data-dir ../shared/data] [--split test]
                                  [--precisions fp32,int8] [--texts 500] [--latency-texts 100]
                                  [--threads N] [--device cpu|cuda] [--calibration-size 1024]
                                  [--gemm-seconds 3] [--out benchmarks/results/frontier]

For every run (a run directory or checkpoint; shell globs are expanded; the teacher is the run
whose ``run.json`` says ``kind: teacher``, or ``--teacher``):

1. an ONNX export with every precision asked for, through :func:`export.onnx.export` (static int8
   calibrated on the train split of ``--dataset``), cached in ``RUN/onnx-frontier/`` and reused
   while the checkpoint's sha256, the precisions and the calibration settings still match;
2. entity F1 (seqeval) on ``--split`` of ``--dataset``, from that export through
   :class:`serving.engine.NerEngine` (the serving code; long sentences are windowed, not cut);
3. speed, each configuration in a fresh process by :func:`benchmarks.serving_bench.run_configs` (the serving
   benchmark's worker): sentences/s at batch 1, 8 and 32, latency p50 / p99 at batch 1, peak RSS,
   model size, on ``--texts`` sentences of the split (evenly spaced) joined as raw text;
4. the fraction of this CPU's GEMM limit each point reaches (:mod:`benchmarks.gemm`).

The teacher's transformers ``pipeline("token-classification")`` (PyTorch, no CRF) is the reference
point: its speed is measured like the rest, and it is placed at the teacher's F1 (the teacher's CRF
tags, from its fp32 export). Writes ``OUT.json``, ``OUT.md`` (one table; which run each point comes
from) and ``OUT.png`` (F1 against sentences/s at batch 32, points labelled depth/precision).

Bad input -- a run that does not exist, a glob that matches nothing, a required depth that no
student has, an unknown precision, a dataset or calibration data that cannot be read -- gets one
line ``error: ...`` and exit code 2 before anything is exported or measured.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import datetime as _dt
import glob
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = "onnx-frontier"
BATCHES = ("1", "8", "32")


class FrontierError(ValueError):
    """Bad input (exit code 2)."""


# --------------------------------------------------------------------------- validation
def expand_runs(patterns) -> list[Path]:
    """Run directories from paths / globs, in order, without duplicates."""
    out: list[Path] = []
    for pat in patterns:
        matches = sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat]
        if not matches:
            raise FrontierError(f"--runs {pat!r} matches nothing")
        for m in matches:
            p = Path(m)
            if not p.exists():
                raise FrontierError(f"run {p} does not exist")
            if p.resolve() not in [q.resolve() for q in out]:
                out.append(p)
    return out


def describe_run(path: Path) -> dict:
    """``{"run", "checkpoint", "kind", "depth", "method", "labels", "config"}`` of a run directory."""
    from training import checkpoint as ckpt

    try:
        best = ckpt.resolve(path)
        info = ckpt.read_run(best)
        config = json.loads((best / ckpt.CONFIG_FILE).read_text())
    except (ckpt.CheckpointError, OSError, ValueError) as e:
        raise FrontierError(f"run {path}: {e}") from None
    return {"run": str(path), "checkpoint": best, "kind": info.get("kind") or "student",
            "method": info.get("method"), "depth": int(config.get("num_hidden_layers", 0)),
            "labels": info.get("labels"), "config": config,
            "num_parameters": info.get("num_parameters")}


def parse_depths(text: str) -> list[int] | None:
    if text.strip().lower() in ("", "any"):
        return None
    try:
        depths = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise FrontierError(f"--depths {text!r}: expected comma-separated integers or 'any'") from None
    if not depths or min(depths) < 1:
        raise FrontierError(f"--depths {text!r}: depths must be >= 1")
    return depths


def validate(args) -> dict:
    from export import format as fmt
    from export import onnx as exp
    from training import corpora

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in fmt.PRECISIONS]
    if bad or not precisions:
        raise FrontierError(f"--precisions {args.precisions!r}: use some of {', '.join(fmt.PRECISIONS)}")
    if args.calibration_size is None:
        args.calibration_size = exp.DEFAULT_CALIBRATION_SIZE
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")  # the teacher's F1 and the reference agreement come from fp32
    for name in ("texts", "latency_texts", "threads", "calibration_size", "gemm_tokens", "repeat"):
        if getattr(args, name) < 1:
            raise FrontierError(f"--{name.replace('_', '-')} must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise FrontierError("--limit must be >= 1")
    runs = [describe_run(p) for p in expand_runs(args.runs or [])]
    if args.teacher:
        if not Path(args.teacher).exists():
            raise FrontierError(f"teacher run {args.teacher} does not exist")
        t = describe_run(Path(args.teacher))
        t["kind"] = "teacher"
        runs = [r for r in runs if Path(r["run"]).resolve() != Path(t["run"]).resolve()] + [t]
    teachers = [r for r in runs if r["kind"] == "teacher"]
    if len(teachers) > 1:
        raise FrontierError(f"several teacher runs: {', '.join(r['run'] for r in teachers)}; keep one")
    students = [r for r in runs if r["kind"] != "teacher"]
    if not students:
        raise FrontierError("no student run among --runs")
    depths = parse_depths(args.depths)
    have = sorted({r["depth"] for r in students})
    if depths is not None:
        missing = [d for d in depths if d not in have]
        if missing:
            raise FrontierError(f"no student run of depth {', '.join(map(str, missing))} among --runs "
                                f"(found depths {', '.join(map(str, have))})")
    try:
        splits = corpora.load_dataset(args.dataset, data_dir=args.data_dir)
    except corpora.DataError as e:
        raise FrontierError(str(e)) from None
    sentences = getattr(splits, args.split)
    if args.limit:
        sentences = sentences[: args.limit]
    if not sentences:
        raise FrontierError(f"{args.dataset} {args.split}: no sentences")
    labels = {tuple(r["labels"] or []) for r in runs}
    calib = None
    if "int8" in precisions:  # calibration data must exist before anything is exported
        try:
            _, calib = exp.calibration_sentences({}, args.calibration, args.dataset if not args.calibration else None,
                                                 args.data_dir, args.calibration_size)
        except exp.ExportError as e:
            raise FrontierError(str(e)) from None
    return {"runs": runs, "teacher": teachers[0] if teachers else None, "precisions": precisions,
            "sentences": sentences, "dataset": splits.name, "labels_differ": len(labels) > 1, "calibration": calib}


# --------------------------------------------------------------------------- exports
def cached_export(run: dict, precisions, args, quiet: bool = True) -> tuple[Path, bool]:
    """``RUN/onnx-frontier`` with ``precisions``: reused when still valid, else (re)exported."""
    from export import format as fmt
    from export import onnx as exp

    out = Path(run["run"]) / CACHE_DIR if Path(run["run"]) != run["checkpoint"] else \
        run["checkpoint"].with_name(run["checkpoint"].name + "-" + CACHE_DIR)
    quantize = [p for p in precisions if p in fmt.QUANTIZED]
    keep = list(exp.DEFAULT_KEEP_FP32) if args.int8_keep_fp32 is None else [k for k in args.int8_keep_fp32 if k]
    key = {"precisions": sorted(precisions), "optimize": bool(args.optimize),
           "calibration": None if "int8" not in quantize else {
               "size": args.calibration_size, "keep_fp32": keep,
               "file": str(Path(args.calibration).resolve()) if args.calibration else None,
               "dataset": None if args.calibration else args.dataset, "data_dir": args.data_dir}}
    if (out / fmt.MANIFEST).is_file():
        try:
            man = fmt.read_manifest(out)
            old = man.get("frontier") or {}
            ok = (set(precisions) <= set(man[fmt.K_PRECISIONS]) and old.get("optimize") == key["optimize"]
                  and (key["calibration"] is None or old.get("calibration") == key["calibration"])
                  and man[fmt.K_SOURCE].get("sha256") == exp.checkpoint_digest(run["checkpoint"])[0])
        except (fmt.ExportFormatError, KeyError, OSError):
            ok = False
        if ok:
            return out, True
    exp.export(run["checkpoint"], out=out, quantize=quantize or None, optimize=args.optimize, quiet=quiet,
               calibration=args.calibration, calibration_dataset=None if args.calibration else args.dataset,
               data_dir=args.data_dir, calibration_size=args.calibration_size, keep_fp32=keep)
    man = json.loads((out / fmt.MANIFEST).read_text())  # record the cache key
    man["frontier"] = key
    from training import checkpoint as ckpt

    ckpt.write_json(out / fmt.MANIFEST, man)
    return out, False


def engine_f1(export_dir: Path, precision: str, sentences, threads: int, device: str) -> dict:
    """seqeval entity F1 of an export on word-split sentences, through the serving engine."""
    from serving.engine import NerEngine
    from training import evaluate as ev

    engine = NerEngine.from_dir(export_dir, precision=precision, threads=threads, device=device)
    t0 = time.perf_counter()
    pred = engine.tag_words([s.words for s in sentences], batch_size=32)
    m = ev.entity_metrics([s.tags for s in sentences], pred)
    return {"precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
            "seconds": round(time.perf_counter() - t0, 2), "sentences": len(sentences)}


# --------------------------------------------------------------------------- report
def _point_label(p: dict) -> str:
    who = "teacher" if p["kind"] == "teacher" else f"L{p['depth']}" + (f" {p['method']}" if p.get("method") else "")
    return f"{who} {p['precision']}"


def targets(points, reference) -> dict:
    out = {}
    teacher_f1 = reference.get("f1") if reference else None
    ref_sps = ((reference or {}).get("throughput") or {}).get("32")
    students = [p for p in points if p["kind"] != "teacher" and p.get("speedup_b32") is not None]
    good = [p for p in students if teacher_f1 is not None and p["f1"] >= teacher_f1 - 0.01]
    best = max(good, key=lambda p: p["speedup_b32"], default=None)
    closest = max(students, key=lambda p: (p["f1"], p["speedup_b32"]), default=None)
    value = None
    if best is not None:
        value = f"{_point_label(best)} ({best['run']}): {best['speedup_b32']}x, F1 {100 * best['f1']:.2f} vs " \
                f"{100 * teacher_f1:.2f}"
    elif closest is not None and teacher_f1 is not None:
        value = f"no student within 1.0 F1; the closest is {_point_label(closest)}, F1 {100 * closest['f1']:.2f} " \
                f"({100 * (closest['f1'] - teacher_f1):+.2f}) at {closest['speedup_b32']}x"
    out["student within 1.0 F1 of the teacher at >= 8x the teacher pipeline (batch 32)"] = {
        "value": value,
        "met": None if ref_sps is None or teacher_f1 is None else bool(best and best["speedup_b32"] >= 8)}
    for prec in ("fp32", "int8"):
        fr = [p for p in points if p["precision"] == prec and p.get("gemm_fraction_b32") is not None]
        out[f"every {prec} point's engine >= 60% of the {prec} GEMM limit (batch 32)"] = {
            "value": None if not fr else f"lowest {100 * min(p['gemm_fraction_b32'] for p in fr):.1f}% "
                                         f"({_point_label(min(fr, key=lambda p: p['gemm_fraction_b32']))})",
            "met": None if not fr else all(p["gemm_fraction_b32"] >= 0.6 for p in fr)}
    return out


def write_markdown(report: dict, path: Path) -> None:
    m = report["machine"]
    lines = ["# Speed / accuracy frontier", "",
             f"- command: `{report['command']}`", f"- date: {report['date']}",
             f"- machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['platform']}, Python {m['python']}, onnxruntime "
             f"{m['onnxruntime']}; {report['threads']} threads per configuration, device {report['device']}",
             f"- {report['gpu']}",
             f"- F1: {report['dataset']} {report['split']} ({report['f1_sentences']} sentences), entity F1 (seqeval) of "
             f"each export through the serving engine; speed: {report['texts']['n']} sentences of the same split "
             f"(evenly spaced) as raw text, latency on the first {report['latency_texts']}; "
             f"{report.get('repeat', 1)} pass(es) per batch size, the median pass reported",
             f"- int8 = static (calibrated) int8: {report['calibration']}"]
    load = m.get("loadavg_at_start")
    if load and load[0] > 0.25 * (m["cpu_count"] or 1):
        lines.append(f"- **warning**: load average {load[0]} at the start: timings are not representative; "
                     "re-run on an idle machine.")
    for k, v in (report.get("gemm_limits") or {}).items():
        lines.append(f"- GEMM limit of this CPU (ONNX Runtime, hidden x intermediate {k}, "
                     f"{next(iter(v.values()))['shape'][0]} tokens): "
                     + ", ".join(f"{p} {r['gflops']:.1f} GFLOP/s" for p, r in v.items()))
    if not report.get("gemm_limits"):
        lines.append("- GEMM limit: not measured (`--gemm-seconds 0`)")
    ref = report.get("reference")
    lines += ["", "| point | run | params | F1 | sent/s b1 | b8 | b32 | x teacher pipeline b32 | p50 ms | p99 ms "
              "| peak RSS MB | model MB | GEMM fraction b32 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def row(name, run, params, f1, thr, lat, rss, size, speed, frac):
        s = lambda b: "" if not thr or b not in thr else f"{thr[b]['sentences_per_s']:.1f}"  # noqa: E731
        return (f"| {name} | `{run}` | {'' if params is None else f'{params / 1e6:.1f}M'} | "
                f"{'' if f1 is None else f'{100 * f1:.2f}'} | {s('1')} | {s('8')} | {s('32')} | "
                f"{'' if speed is None else f'{speed}x'} | {lat.get('p50', '') if lat else ''} | "
                f"{lat.get('p99', '') if lat else ''} | {'' if rss is None else f'{rss / 2**20:.0f}'} | "
                f"{'' if size is None else f'{size / 2**20:.1f}'} | {'' if frac is None else f'{100 * frac:.1f}%'} |")

    for p in report["points"]:
        if "error" in p:
            lines.append(f"| {_point_label(p)} | `{p['run']}` | error: {p['error'][:120]} ||||||||||")
            continue
        lines.append(row(_point_label(p), p["run"], p.get("num_parameters"), p["f1"], p["throughput"], p["latency_ms"],
                         p["peak_rss_bytes"], p["model_bytes"], p.get("speedup_b32"), p.get("gemm_fraction_b32")))
    if ref and "error" not in ref:
        lines.append(row("teacher pipeline (transformers, PyTorch)", ref["run"], None, ref.get("f1"),
                         ref["throughput"], ref["latency_ms"], ref["peak_rss_bytes"], ref["model_bytes"], 1.0, None))
    elif ref:
        lines.append(f"| teacher pipeline | `{ref['run']}` | error: {ref['error'][:120]} ||||||||||")
    else:
        lines.append("| teacher pipeline | (no teacher run given: no reference point) ||||||||||||")
    lines += ["", "## Targets (reported, not asserted)", ""]
    for k, t in report["targets"].items():
        lines.append(f"- {k}: {t['value'] or 'n/a'} -> "
                     f"{'met' if t['met'] else 'not met' if t['met'] is False else 'not measured'}")
    lines += ["", "Notes: F1 and speed come from the same export (`RUN/onnx-frontier/`). The teacher pipeline "
              "has no CRF; its point is placed at the teacher's own F1 (its CRF tags from the fp32 export). "
              "GEMM fraction = the encoder's matrix-product FLOPs over the windows run / wall time / this CPU's "
              "GEMM rate (`benchmarks.gemm`; int8 points against the int8 rate). Plot: "
              f"`{Path(report['plot']).name if report.get('plot') else 'none (no matplotlib)'}`.", ""]
    path.write_text("\n".join(lines))


def plot(report: dict, path: Path) -> bool:
    from benchmarks.common import pyplot

    plt = pyplot()
    if plt is None:
        return False
    pts = [p for p in report["points"] if "error" not in p and p["throughput"].get("32")]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = {"fp32": "o", "int8": "s", "int8-dynamic": "^"}
    for prec in markers:
        sel = [p for p in pts if p["precision"] == prec]
        if sel:
            ax.scatter([p["throughput"]["32"]["sentences_per_s"] for p in sel], [100 * p["f1"] for p in sel],
                       marker=markers[prec], s=50, label=prec, zorder=3)
    for p in pts:  # fp32 labels above, int8 below: the two precisions of one run often sit close
        ax.annotate(_point_label(p), (p["throughput"]["32"]["sentences_per_s"], 100 * p["f1"]),
                    textcoords="offset points", xytext=(5, 4 if p["precision"] == "fp32" else -11), fontsize=8)
    ref = report.get("reference")
    if ref and "error" not in ref and ref.get("f1") is not None:
        x = ref["throughput"]["32"]["sentences_per_s"]
        ax.scatter([x], [100 * ref["f1"]], marker="*", s=220, color="black", label="teacher pipeline (transformers)",
                   zorder=4)
        ax.axvline(8 * x, color="grey", ls=":", lw=1, label="8x teacher pipeline")
        ax.axhline(100 * ref["f1"] - 1, color="grey", ls="--", lw=1, label="teacher F1 - 1")
    ax.set_xscale("log")
    ax.set_xlabel("sentences / s at batch 32 (log)")
    ax.set_ylabel(f"entity F1 (%) on {report['dataset']} {report['split']}")
    ax.set_title(f"Speed / accuracy frontier ({report['threads']} threads, {report['date'][:10]})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.frontier", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, help="run directories or globs (students, and the teacher)")
    ap.add_argument("--teacher", default=None, help="the teacher run (default: the run with kind 'teacher')")
    ap.add_argument("--depths", default="1,2,3,4", help="student depths that must be present ('any': no check)")
    ap.add_argument("--dataset", default="conll2003")
    ap.add_argument("--data-dir", default=None, help="folder of the dataset (e.g. ../shared/data)")
    ap.add_argument("--split", default="test", choices=["train", "dev", "test"])
    ap.add_argument("--limit", type=int, default=None, help="F1 on the first N sentences only")
    ap.add_argument("--precisions", default="fp32,int8", help="comma-separated: fp32, int8, int8-dynamic")
    ap.add_argument("--optimize", action="store_true", help="export with ONNX Runtime's transformer fusions")
    ap.add_argument("--calibration", default=None, help="static int8 calibration sentences (default: train split)")
    ap.add_argument("--calibration-size", type=int, default=None,
                    help="static int8: sentences sampled from the train split (default: export.onnx's)")
    ap.add_argument("--int8-keep-fp32", action="append", default=None, metavar="REGEX",
                    help="static int8: node-name patterns left in fp32 (default: export.onnx's)")
    ap.add_argument("--texts", type=int, default=500, help="sentences for the speed measurements")
    ap.add_argument("--latency-texts", type=int, default=100)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--gemm-seconds", type=float, default=3.0, help="per precision (0: skip the GEMM limit)")
    ap.add_argument("--gemm-tokens", type=int, default=1024)
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per speed configuration")
    ap.add_argument("--repeat", type=int, default=3, help="passes over the texts per batch size; the median is reported")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "frontier"),
                    help="output path prefix (.json, .md, .png)")
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    from benchmarks import serving_bench as bench
    from benchmarks.common import machine
    from benchmarks.texts import spread

    host = machine()  # before the exports and F1 runs load the CPU: the load average of other work

    try:
        if args.gemm_seconds < 0:
            raise FrontierError("--gemm-seconds must be >= 0")
        v = validate(args)
    except FrontierError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs, precisions, sentences = v["runs"], v["precisions"], v["sentences"]
    speed_sents = spread(sentences, args.texts)
    texts = [" ".join(s.words) for s in speed_sents]
    n_words = sum(len(s.words) for s in speed_sents)

    # 1-2. exports (cached) and F1 through the engine
    points, configs = [], {}
    for r in runs:
        t0 = time.time()
        try:
            export_dir, reused = cached_export(r, precisions, args)
        except Exception as e:  # an export failing is reported as that run's error, the others go on
            points += [{**_meta(r), "precision": p, "error": f"export failed: {type(e).__name__}: {e}"}
                       for p in precisions]
            continue
        print(f"[frontier] {r['run']}: export {'reused' if reused else 'written'} ({export_dir}) "
              f"[{time.time() - t0:.0f} s]", flush=True)
        for p in precisions:
            f1 = engine_f1(export_dir, p, sentences, args.threads, args.device)
            print(f"[frontier] {r['run']} {p}: F1 {100 * f1['f1']:.2f} ({f1['seconds']} s)", flush=True)
            name = f"{r['run']}::{p}"
            points.append({**_meta(r), "precision": p, "export": str(export_dir), "f1": f1["f1"],
                           "f1_detail": f1, "name": name})
            configs[name] = {"kind": "engine", "precision": p, "export_dir": str(export_dir.resolve()),
                             "device": args.device}
    teacher = v["teacher"]
    if teacher is not None:
        configs["teacher-pipeline"] = {"kind": "teacher", "checkpoint": str(teacher["checkpoint"]),
                                       "export_dir": ""}

    # 3. speed of every configuration (fresh processes), 4. GEMM limit per encoder shape
    results = bench.run_configs(configs, texts, n_words, args.threads, args.latency_texts, args.timeout, "frontier",
                                args.repeat)
    limits = {}
    for p in points:
        if "error" in p:
            continue
        cfg = next(r for r in runs if r["run"] == p["run"])["config"]
        key = f"{cfg['hidden_size']}x{cfg.get('intermediate_size') or 4 * cfg['hidden_size']}"
        if key not in limits and args.gemm_seconds > 0:
            limits[key] = bench.measure_gemm_limits(p["export"], args.threads, args.gemm_seconds, args.gemm_tokens)
        p["gemm_limit"] = key if key in limits else None
    ref = None
    if teacher is not None:
        rr = results.pop("teacher-pipeline")
        rr.pop("predictions", None)
        tf1 = next((p["f1"] for p in points if p["kind"] == "teacher" and p["precision"] == "fp32" and "f1" in p), None)
        ref = {"run": teacher["run"], "f1": tf1, **rr}
    ref_b32 = ((ref or {}).get("throughput") or {}).get("32", {}).get("sentences_per_s")
    for p in points:
        if "error" in p:
            continue
        r = results.get(p.pop("name"), {"error": "not measured"})
        r.pop("predictions", None)
        if "error" in r:
            p["error"] = r["error"]
            continue
        p.update({k: r[k] for k in ("throughput", "latency_ms", "peak_rss_bytes", "model_bytes", "load_seconds",
                                    "flops") if k in r})
        g = bench.gemm_fractions(r, limits.get(p["gemm_limit"]), p["precision"])
        p["gemm"] = g
        p["gemm_fraction_b32"] = (g or {}).get("b32", {}).get("fraction")
        b32 = r["throughput"].get("32", {}).get("sentences_per_s")
        p["speedup_b32"] = round(b32 / ref_b32, 2) if b32 and ref_b32 else None
    calib = v["calibration"]
    report = {
        "command": " ".join(["python -m benchmarks.frontier"] + [shlex.quote(a) for a in argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": host,
        "threads": args.threads, "device": args.device, "gpu": bench.gpu_line(args.device, {
            n: r for n, r in results.items() if "error" not in r}) if results else "GPU: not measured",
        "dataset": v["dataset"], "split": args.split, "f1_sentences": len(sentences),
        "texts": {"n": len(texts), "words": n_words}, "latency_texts": min(args.latency_texts, len(texts)),
        "repeat": args.repeat,
        "precisions": precisions,
        "calibration": "n/a" if calib is None else (
            f"{calib.get('sentences')} sentences, min-max, " +
            (f"file {calib.get('file')}" if calib.get("source") == "file" else
             f"train split of {calib.get('dataset')} (random sample, seed 0)")),
        "gemm_limits": limits, "points": points, "reference": ref,
    }
    report["targets"] = targets([p for p in points if "error" not in p], ref)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report["plot"] = f"{out}.png" if plot(report, Path(f"{out}.png")) else None
    Path(f"{out}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    write_markdown(report, Path(f"{out}.md"))
    print(f"wrote {out}.json, {out}.md" + (f", {out}.png" if report["plot"] else ""))
    for k, t in report["targets"].items():
        print(f"  {k}: {t['value'] or 'n/a'}")
    errors = [p for p in points if "error" in p] + ([ref] if ref and "error" in ref else [])
    return 1 if errors else 0


def _meta(r: dict) -> dict:
    return {"run": r["run"], "kind": r["kind"], "depth": r["depth"], "method": r["method"],
            "num_parameters": r.get("num_parameters")}


if __name__ == "__main__":
    sys.exit(main())
