"""Serving benchmark: our ONNX Runtime engine against the usual ways of running the same models.

    python -m benchmarks.serving_bench EXPORT_DIR [--teacher RUN] [--student-checkpoint RUN] [--texts 500]
                                                  [--latency-texts 100] [--threads N] [--data CONLL_FILE]
                                                  [--device cpu|cuda] [--gemm-seconds 3] [--sweep]
                                                  [--out benchmarks/results/serving]

Configurations (each measured in a fresh subprocess, so that its peak RSS is its own; all on the
same texts, in the same run, with the same number of threads):

* ``engine_fp32`` / ``engine_int8`` / ``engine_int8-dynamic``: :class:`serving.engine.NerEngine`
  (tokenizers + ONNX Runtime + NumPy CRF, entity confidences included) on every graph the export
  has (``model.onnx``, static ``model.int8.onnx``, ``model.int8-dynamic.onnx``; the engine runs
  int8-dynamic one text at a time, see :mod:`serving.engine`);
* ``optimum_student``: optimum's ``ORTModelForTokenClassification`` on the same ``model.onnx``
  (``file_name="model.onnx"``) in a transformers ``pipeline("token-classification",
  aggregation_strategy="simple")`` -- no CRF, softmax scores;
* ``torch_student``: the PyTorch student (``training.model.load``) through the engine's own
  pipeline (:mod:`training.backend`: same words, windows, NumPy CRF and confidences; only the
  encoder is PyTorch instead of ONNX Runtime); default: the checkpoint named in the export's
  manifest, when it exists;
* ``hf_teacher``: transformers ``pipeline("token-classification")`` on the teacher's encoder + head
  (``RUN/best``, PyTorch, no CRF).

Measured: latency p50/p95/p99 of one text at a time (batch 1, the first ``--latency-texts`` texts),
throughput in sentences/s and words/s at batch 8 and 32 (the texts in order, in chunks of that
size: one chunk per call, like micro-batches of a server), load time, peak RSS, model size, and for
our engine the time per stage (tokenize, onnx, viterbi, confidence, postprocess). Ratios and the
targets (student >= 8x the teacher pipeline, >= 1.5x optimum, Viterbi <= 5% of end-to-end time)
are reported, not asserted. Writes ``OUT.json``, ``OUT.md`` and ``OUT.png``.

The hardware limit: the sustained GEMM rate of this CPU with ONNX Runtime (:mod:`benchmarks.gemm`,
the encoder's feed-forward shape, the same threads) is measured first (``--gemm-seconds 0`` skips
it), and for every engine configuration the report gives the fraction of that limit reached:
``encoder FLOPs of the windows run / wall time / GEMM rate`` (fp32 against the fp32 rate, int8 and
int8-dynamic against the int8 rate), end to end and for the ONNX Runtime stage alone.

``--sweep``: instead of the comparison, the engine alone (every precision) under ONNX Runtime
session variants -- intra-op threads, spinning, graph optimisation level, parallel execution with
2 inter-op threads, IO binding -- each changed alone from the engine's defaults, each in a fresh
process; writes ``OUT_sweep.{json,md}``. Time it on an idle machine before changing a default.

``--device cuda`` runs the engine configurations on the CUDAExecutionProvider (onnxruntime-gpu);
without it the report says ``GPU: not measured``.

Texts: see :mod:`benchmarks.texts` (CoNLL-2003 test sentences when ``../shared/data`` is there).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, percentile
from export.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (8, 32)


# --------------------------------------------------------------------------- workers (subprocesses)
def _engine_predictor(cfg):
    from serving.engine import NerEngine

    engine = NerEngine.from_dir(cfg["export_dir"], precision=cfg["precision"], threads=cfg["threads"],
                                device=cfg.get("device", "cpu"), **(cfg.get("ort") or {}))
    stages = {}

    def predict(texts, bs, key=None):
        res, t = engine.predict(texts, batch_size=bs, return_timings=True)
        if key is not None:
            acc = stages.setdefault(key, {k: 0.0 for k in STAGES + ("total",)})
            for k in acc:
                acc[k] += t[k]
        return [[(e.start, e.end, e.label) for e in r] for r in res]

    from export import format as fmt

    size = fmt.model_path(cfg["export_dir"], cfg["precision"]).stat().st_size
    predict.engine = engine
    return predict, size, stages


def _pipeline_predictor(pipe):
    def predict(texts, bs, key=None):
        out = pipe(list(texts), batch_size=bs)
        return [[(int(e["start"]), int(e["end"]), e["entity_group"]) for e in r] for r in out]
    return predict


def _optimum_predictor(cfg):
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForTokenClassification
    from transformers import AutoTokenizer, pipeline

    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg["threads"]
    so.inter_op_num_threads = 1
    model = ORTModelForTokenClassification.from_pretrained(cfg["export_dir"], file_name="model.onnx",
                                                           local_files_only=True, session_options=so)
    tok = AutoTokenizer.from_pretrained(cfg["export_dir"])
    pipe = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="simple")
    return _pipeline_predictor(pipe), (Path(cfg["export_dir"]) / "model.onnx").stat().st_size, None


def _teacher_predictor(cfg):
    import torch
    from transformers import pipeline

    from training import checkpoint as ckpt

    torch.set_num_threads(cfg["threads"])
    best = ckpt.resolve(cfg["checkpoint"])
    pipe = pipeline("token-classification", model=str(best), tokenizer=str(best), aggregation_strategy="simple",
                    device=-1)
    return _pipeline_predictor(pipe), _weights_size(best), None


def _torch_student_predictor(cfg):
    import torch

    from training import backend
    from training import checkpoint as ckpt
    from training.model import load

    torch.set_num_threads(cfg["threads"])
    model, tok, run = load(cfg["checkpoint"])
    tagger = backend.tagger(model, tok, backend.max_length(model, tok, run))

    def predict(texts, bs, key=None):
        return [[(e.start, e.end, e.label) for e in r] for r in tagger.predict(texts, batch_size=bs)]

    return predict, _weights_size(ckpt.resolve(cfg["checkpoint"])), None


def _weights_size(directory: Path) -> int:
    return sum((directory / f).stat().st_size for f in ("model.safetensors", "crf.safetensors")
               if (directory / f).is_file())


def peak_rss_bytes() -> int:
    """Peak resident set size of this process: ``VmHWM`` (it starts afresh at exec; ``ru_maxrss``
    keeps the high-water mark of the parent that forked us), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def run_worker(cfg: dict) -> dict:
    """Measure one configuration (in this process). ``cfg``: kind, texts_file, threads, ..."""
    data = json.loads(Path(cfg["texts_file"]).read_text())
    texts, n_words = data["texts"], data["words"]
    t0 = time.perf_counter()
    build = {"engine": _engine_predictor, "optimum": _optimum_predictor, "teacher": _teacher_predictor,
             "torch_student": _torch_student_predictor}[cfg["kind"]]
    predict, size, stages = build(cfg)
    load_s = time.perf_counter() - t0
    predict(texts[:8], 8)  # warm-up (first-run allocations, lazy imports)
    repeat = max(1, int(cfg.get("repeat", 1)))  # passes over the texts: the median pass is reported
    lat = []
    for _ in range(repeat):
        for t in texts[: cfg["latency_texts"]]:
            t1 = time.perf_counter()
            predict([t], 1)
            lat.append((time.perf_counter() - t1) * 1000)
    throughput, predictions = {}, None
    if lat:  # batch 1: one text per call, from the latency loop
        throughput["1"] = {"seconds": round(sum(lat) / 1000 / repeat, 3),
                           "sentences_per_s": round(1000 * len(lat) / sum(lat), 2), "texts": len(lat) // repeat}
    for bs in cfg.get("batch_sizes", BATCH_SIZES):
        passes = []
        for _ in range(repeat):
            preds = []
            t1 = time.perf_counter()
            for i in range(0, len(texts), bs):
                preds += predict(texts[i:i + bs], bs, f"b{bs}")
            passes.append(time.perf_counter() - t1)
        dt = statistics.median(passes)
        throughput[str(bs)] = {"seconds": round(dt, 3), "sentences_per_s": round(len(texts) / dt, 2),
                               "words_per_s": round(n_words / dt, 1),
                               "passes_sentences_per_s": [round(len(texts) / p, 2) for p in passes]}
        predictions = preds
    peak = peak_rss_bytes()
    out = {"kind": cfg["kind"], "load_seconds": round(load_s, 2), "model_bytes": size, "peak_rss_bytes": peak,
           "latency_ms": {**{f"p{q}": round(percentile(lat, q), 3) for q in (50, 95, 99)},
                          "mean": round(sum(lat) / len(lat), 3), "n": len(lat)},
           "throughput": throughput, "predictions": predictions}
    if stages:  # seconds per pass (the passes' mean), comparable with one pass's throughput
        out["stages"] = {k: {s: round(v / repeat, 4) for s, v in d.items()} for k, d in stages.items()}
    engine = getattr(predict, "engine", None)
    if engine is not None:  # the encoder work done: FLOPs of the windows the engine ran
        from benchmarks.gemm import encoder_flops, read_config

        config = read_config(cfg["export_dir"])
        lengths = engine.window_lengths(texts)
        out["flops"] = {"all_texts": encoder_flops(config, lengths),
                        "latency_texts": encoder_flops(config, engine.window_lengths(texts[: cfg["latency_texts"]])),
                        "windows": len(lengths), "mean_window_sub_tokens": round(sum(lengths) / max(len(lengths), 1), 2)}
        out["batch_invariant"] = engine.batch_invariant
        out["providers"] = list(engine.session.get_providers())
    return out


# --------------------------------------------------------------------------- parent
def _agreement(pred, ref) -> dict:
    pred = [{tuple(e) for e in p} for p in pred]
    ref = [{tuple(e) for e in r} for r in ref]
    tp = sum(len(p & r) for p, r in zip(pred, ref))
    n_p, n_r = sum(map(len, pred)), sum(map(len, ref))
    f1 = 2 * tp / (n_p + n_r) if n_p + n_r else 1.0
    same = sum(p == r for p, r in zip(pred, ref)) / max(len(ref), 1)
    return {"entity_f1": round(f1, 4), "identical_texts": round(same, 4)}


def _ratio(a, b):
    return round(a / b, 2) if a and b else None


def summarize(results: dict) -> tuple[dict, dict]:
    ok = {k: v for k, v in results.items() if "error" not in v}

    def sps(name, bs):
        return ok.get(name, {}).get("throughput", {}).get(str(bs), {}).get("sentences_per_s")

    ratios = {}
    engines = [n for n in ok if n.startswith("engine_")]
    for bs in BATCH_SIZES:
        for ours in engines:
            for other in ("hf_teacher", "optimum_student", "torch_student"):
                r = _ratio(sps(ours, bs), sps(other, bs))
                if r is not None:
                    ratios[f"{ours}_vs_{other}_b{bs}"] = r
        for q in ("int8", "int8-dynamic"):
            r = _ratio(sps(f"engine_{q}", bs), sps("engine_fp32", bs))
            if r is not None:
                ratios[f"{q}_vs_fp32_b{bs}"] = r
    for q in ("int8", "int8-dynamic"):
        if f"engine_{q}" in ok and "engine_fp32" in ok:
            ratios[f"{q}_vs_fp32_latency_p50"] = _ratio(ok[f"engine_{q}"]["latency_ms"]["p50"],
                                                        ok["engine_fp32"]["latency_ms"]["p50"])
            ratios[f"{q}_vs_fp32_model_size"] = _ratio(ok[f"engine_{q}"]["model_bytes"],
                                                       ok["engine_fp32"]["model_bytes"])
    shares = {}
    for name in engines:
        for key, st in (ok.get(name, {}).get("stages") or {}).items():
            total = st["total"] or float("nan")
            shares[f"{name}_{key}"] = {s: round(st[s] / total, 4) for s in STAGES}
    best = max((sps(n, 32) or 0, n) for n in engines)[1] if engines else None
    targets = {}

    def target(name, value, goal, higher=True):
        targets[name] = {"value": value, "target": goal,
                         "met": None if value is None else (value >= goal if higher else value <= goal)}

    target("engine_fp32 / hf_teacher sentences/s (batch 32) >= 8", ratios.get("engine_fp32_vs_hf_teacher_b32"), 8)
    if best and best != "engine_fp32":
        target(f"{best} / hf_teacher sentences/s (batch 32) >= 8", ratios.get(f"{best}_vs_hf_teacher_b32"), 8)
    target("engine_fp32 / optimum_student sentences/s (batch 32) >= 1.5",
           ratios.get("engine_fp32_vs_optimum_student_b32"), 1.5)
    sh = shares.get("engine_fp32_b32", {})
    target("Viterbi share of end-to-end engine time (fp32, batch 32) <= 5%", sh.get("viterbi"), 0.05, higher=False)
    return ratios, {"targets": targets, "stage_shares": shares}


def gemm_fractions(result: dict, limits: dict | None, precision: str) -> dict | None:
    """Fraction of the GEMM limit an engine configuration reached (see the module doc)."""
    if not limits or "flops" not in result:
        return None
    from benchmarks.gemm import limit_for

    key = limit_for(precision)
    rate = (limits.get(key) or {}).get("gflops")
    if not rate:
        return None
    out = {"limit": key, "limit_gflops": round(rate, 2)}
    flops = result["flops"]["all_texts"]
    for bs, thr in result["throughput"].items():
        if bs == "1":
            achieved = result["flops"]["latency_texts"] / thr["seconds"] / 1e9 if thr["seconds"] else None
        else:
            achieved = flops / thr["seconds"] / 1e9 if thr["seconds"] else None
        if achieved is None:
            continue
        entry = {"gflops": round(achieved, 3), "fraction": round(achieved / rate, 4)}
        onnx_s = ((result.get("stages") or {}).get(f"b{bs}") or {}).get("onnx")
        if onnx_s:
            entry["onnx_stage_gflops"] = round(flops / onnx_s / 1e9, 3)
            entry["onnx_stage_fraction"] = round(flops / onnx_s / 1e9 / rate, 4)
        out[f"b{bs}"] = entry
    return out


def gpu_line(device: str, results: dict) -> str:
    """``GPU: ...`` for the reports: measured only when an engine ran on the CUDA provider."""
    ran = [n for n, r in results.items() if "CUDAExecutionProvider" in (r.get("providers") or [])]
    if device == "cuda" and ran:
        return f"GPU: measured (CUDAExecutionProvider: {', '.join(ran)})"
    try:
        import onnxruntime as ort

        have = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:  # pragma: no cover
        have = False
    return ("GPU: not measured (" + ("CUDAExecutionProvider available; run with --device cuda" if have else
                                     "no CUDAExecutionProvider in this onnxruntime / no GPU") + ")")


def write_markdown(report: dict, path: Path) -> None:
    R = report["results"]
    mb = lambda b: "" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
    lines = ["# Serving benchmark", "",
             f"- command: `{report['command']}`", f"- date: {report['date']}",
             f"- machine: {report['machine']['cpu']}, {report['machine']['cpu_count']} CPUs, "
             f"{report['machine']['platform']}, Python {report['machine']['python']}, onnxruntime "
             f"{report['machine']['onnxruntime']}; {report['threads']} threads per configuration",
             f"- texts: {report['texts']['n']} sentences, {report['texts']['words']} words, from "
             f"{report['texts']['source']}; latency on the first {report['latency_texts']}; "
             f"{report.get('repeat', 1)} pass(es) per batch size, the median pass reported",
             f"- export: `{report['export_dir']}`", f"- {report.get('gpu', 'GPU: not measured')}"]
    load = report["machine"].get("loadavg_at_start")
    if load and load[0] > 0.25 * (report["machine"]["cpu_count"] or 1):
        lines.append(f"- **warning**: load average {load[0]} at the start -- other processes shared the CPUs; "
                     "absolute numbers (PyTorch's in particular, whose OpenMP threads suffer most from "
                     "oversubscription) are not representative. Re-run on an idle machine.")
    lines += ["",
              "| configuration | model MB | load s | peak RSS MB | p50 ms | p95 ms | p99 ms | sent/s b8 | sent/s b32 "
              "| words/s b32 | agreement with engine_fp32 (entity F1) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in R.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:120]} |||||||||")
            continue
        lat, thr = r["latency_ms"], r["throughput"]
        agree = (r.get("agreement") or {}).get("entity_f1", "")
        lines.append(f"| {name} | {mb(r['model_bytes'])} | {r['load_seconds']} | {mb(r['peak_rss_bytes'])} | "
                     f"{lat['p50']} | {lat['p95']} | {lat['p99']} | {thr['8']['sentences_per_s']} | "
                     f"{thr['32']['sentences_per_s']} | {thr['32']['words_per_s']} | {agree} |")
    lines += ["", "## Ratios (sentences/s, same texts, same run)", ""]
    lines += [f"- {k}: **{v}x**" for k, v in report["ratios"].items()] or ["- (no comparison ran)"]
    lines += ["", "## Targets (reported, not asserted)", ""]
    for k, t in report["summary"]["targets"].items():
        v = t["value"]
        shown = "n/a" if v is None else (f"{100 * v:.1f}%" if "share" in k else f"{v}x")
        lines.append(f"- {k}: {shown} -> {'met' if t['met'] else 'not met' if t['met'] is False else 'not measured'}")
    lines += ["", "## Hardware limit (fraction of this CPU's GEMM rate the engine reaches)", ""]
    limits = report.get("gemm_limits")
    if not limits:
        lines.append("- not measured (`--gemm-seconds 0`)")
    else:
        for k, v in limits.items():
            lines.append(f"- GEMM limit {k}: **{v['gflops']:.1f} GFLOP/s** ({v['op']}, tokens x K x N = "
                         f"{' x '.join(map(str, v['shape']))}, {v['threads']} threads, median of {v['runs']} runs)")
        lines += ["", "| configuration | limit | GFLOP/s b1 | b8 | b32 | fraction b1 | b8 | b32 | ONNX stage only b32 |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        pct = lambda e, k: "" if not e or e.get(k) is None else f"{100 * e[k]:.1f}%"  # noqa: E731
        for name, r in R.items():
            g = r.get("gemm") if "error" not in r else None
            if not g:
                continue
            lines.append(f"| {name} | {g['limit']} | " + " | ".join(str((g.get(f'b{b}') or {}).get('gflops', ''))
                                                                    for b in ("1", "8", "32"))
                         + " | " + " | ".join(pct(g.get(f"b{b}"), "fraction") for b in ("1", "8", "32"))
                         + f" | {pct(g.get('b32'), 'onnx_stage_fraction')} |")
        lines += ["", "Achieved GFLOP/s = the encoder's matrix-product FLOPs over the windows the engine ran "
                  "(`benchmarks.gemm.encoder_flops`: L(8nh^2 + 4n^2h + 4nhi) + 2nhC per sequence of n sub-tokens, "
                  "no padding counted) / wall time; int8 configurations against the int8 rate."]
    lines += ["", "## Engine time by stage (share of end-to-end)", ""]
    for k, sh in report["summary"]["stage_shares"].items():
        lines.append(f"- {k}: " + ", ".join(f"{s} {100 * v:.1f}%" for s, v in sh.items()))
    lines += ["", "Notes: the engine's numbers include splitting raw text into words, the CRF (Viterbi) and "
              "the exact CRF confidence of every entity (forward-backward, `confidence`); optimum and the teacher "
              "pipeline have no CRF (softmax scores, `aggregation_strategy=\"simple\"`). Each configuration ran in "
              "its own process; peak RSS is that process's maximum resident set size.", ""]
    path.write_text("\n".join(lines))


def plot(report: dict, path: Path) -> bool:
    from benchmarks.common import pyplot

    plt = pyplot()
    if plt is None:
        return False
    R = {k: v for k, v in report["results"].items() if "error" not in v}
    if not R:
        return False
    names = list(R)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    w = 0.38
    for j, bs in enumerate(BATCH_SIZES):
        vals = [R[n]["throughput"][str(bs)]["sentences_per_s"] for n in names]
        a1.bar([i + (j - 0.5) * w for i in range(len(names))], vals, w, label=f"batch {bs}")
    a1.set_xticks(range(len(names)), names, rotation=20, ha="right")
    a1.set_ylabel("sentences / s")
    a1.set_yscale("log")
    a1.set_title("Throughput")
    a1.legend()
    w = 0.27
    for j, q in enumerate(("p50", "p95", "p99")):
        vals = [R[n]["latency_ms"][q] for n in names]
        a2.bar([i + (j - 1) * w for i in range(len(names))], vals, w, label=q)
    a2.set_xticks(range(len(names)), names, rotation=20, ha="right")
    a2.set_ylabel("ms (one text)")
    a2.set_yscale("log")
    a2.set_title("Latency at batch 1")
    a2.legend()
    fig.suptitle(f"{report['texts']['n']} sentences, {report['threads']} threads, "
                 f"{report['machine']['cpu_count']} CPUs ({report['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run_configs(configs: dict, texts: list[str], n_words: int, threads: int, latency_texts: int,
                timeout: int = 1800, tag: str = "bench", repeat: int = 1) -> dict:
    """Measure every configuration (``name -> cfg``) in a fresh ``python -m benchmarks.serving_bench --worker``
    process on the same texts, ``repeat`` passes per batch size (the median pass is reported; latency
    percentiles over every pass). Returns ``name -> result`` (``{"error": ...}`` for a failed one)."""
    results = {}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
               OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        tfile = Path(tmp) / "texts.json"
        tfile.write_text(json.dumps({"texts": texts, "words": n_words}))
        for i, (name, c) in enumerate(configs.items()):
            cfg = {**c, "texts_file": str(tfile), "threads": c.get("threads", threads),
                   "latency_texts": min(latency_texts, len(texts)), "repeat": repeat}
            cpath, rpath = Path(tmp) / f"{i}.cfg.json", Path(tmp) / f"{i}.result.json"
            cpath.write_text(json.dumps(cfg))
            print(f"[{tag}] {name} ...", flush=True)
            t0 = time.time()
            try:
                p = subprocess.run([sys.executable, "-m", "benchmarks.serving_bench", "--worker", str(cpath),
                                    str(rpath)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
                if p.returncode != 0:
                    tail = [x for x in p.stderr.strip().splitlines() if x.strip()][-1:] or ["no output"]
                    results[name] = {"error": f"exit code {p.returncode}: {tail[0]}"}
                else:
                    results[name] = json.loads(rpath.read_text())
            except subprocess.TimeoutExpired:
                results[name] = {"error": f"timed out after {timeout} s"}
            r = results[name]
            top = str(max(int(b) for b in r["throughput"])) if "throughput" in r else None
            print(f"[{tag}] {name}: " + (r["error"] if "error" in r else
                  f"{r['throughput'][top]['sentences_per_s']} sent/s (b{top}), p50 {r['latency_ms']['p50']} ms, "
                  f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MB") + f" [{time.time() - t0:.0f} s]", flush=True)
    return results


def measure_gemm_limits(export_dir, threads: int, seconds: float, tokens: int) -> dict | None:
    """The GEMM limit (:mod:`benchmarks.gemm`) for the export's encoder shape; None when skipped."""
    if seconds <= 0:
        return None
    from benchmarks.gemm import measure_limits, read_config

    print(f"[bench] GEMM limit ({tokens} tokens, {threads} threads, {seconds} s per precision) ...", flush=True)
    limits = measure_limits(read_config(export_dir), threads, tokens=tokens, seconds=seconds)
    for k, v in limits.items():
        print(f"[bench] GEMM {k}: {v['gflops']:.1f} GFLOP/s ({v['op']}, shape {v['shape']})", flush=True)
    return limits


SWEEP_BASE = {"spinning": False, "graph_optimization": "all", "execution_mode": "sequential", "inter_op_threads": 1,
              "io_binding": False}


def sweep_variants(threads: int) -> dict:
    """The engine's defaults and each ONNX Runtime knob changed alone (see the module doc)."""
    v = {"defaults": ({}, threads)}
    for t in sorted({1, max(1, threads // 2)} - {threads}):
        v[f"threads={t}"] = ({}, t)
    v.update({"spinning=on": ({"spinning": True}, threads),
              "graph_optimization=extended": ({"graph_optimization": "extended"}, threads),
              "graph_optimization=basic": ({"graph_optimization": "basic"}, threads),
              "execution_mode=parallel, inter_op_threads=2": (
                  {"execution_mode": "parallel", "inter_op_threads": 2}, threads),
              "io_binding=on": ({"io_binding": True}, threads)})
    return v


def write_sweep(report: dict, path: Path) -> None:
    lines = ["# Engine under ONNX Runtime session variants (`benchmarks.serving_bench --sweep`)", "",
             f"- command: `{report['command']}`", f"- date: {report['date']}",
             f"- machine: {report['machine']['cpu']}, {report['machine']['cpu_count']} CPUs, onnxruntime "
             f"{report['machine']['onnxruntime']}, load average at start {report['machine']['loadavg_at_start']}",
             f"- texts: {report['texts']['n']} from {report['texts']['source']}; export `{report['export_dir']}`",
             f"- {report['gpu']}", "",
             "| precision | variant | threads | p50 ms (b1) | sent/s b8 | sent/s b32 | vs defaults (b32) "
             "| GEMM fraction b32 |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for prec, rows in report["sweep"].items():
        base = (rows.get("defaults") or {}).get("throughput", {}).get("32", {}).get("sentences_per_s")
        for name, r in rows.items():
            if "error" in r:
                lines.append(f"| {prec} | {name} | | error: {r['error'][:100]} ||||")
                continue
            b32 = r["throughput"]["32"]["sentences_per_s"]
            frac = ((r.get("gemm") or {}).get("b32") or {}).get("fraction")
            lines.append(f"| {prec} | {name} | {r['threads']} | {r['latency_ms']['p50']} | "
                         f"{r['throughput']['8']['sentences_per_s']} | {b32} | "
                         f"{_ratio(b32, base) or ''}{'x' if base else ''} | "
                         f"{'' if frac is None else f'{100 * frac:.1f}%'} |")
    lines += ["", "Each variant ran in its own process on the same texts; one knob changed at a time from the engine's "
              "defaults (spinning off, graph optimisation `all`, sequential execution, 1 inter-op thread, no IO "
              "binding). A difference of a few percent is within run-to-run noise unless it repeats.", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:  # internal: python -m benchmarks.serving_bench --worker CONFIG RESULT
        cfg = json.loads(Path(argv[1]).read_text())
        Path(argv[2]).write_text(json.dumps(run_worker(cfg)))
        return 0
    ap = argparse.ArgumentParser(prog="python -m benchmarks.serving_bench", description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", metavar="EXPORT_DIR")
    ap.add_argument("--teacher", default=None, help="teacher run or checkpoint (transformers pipeline baseline)")
    ap.add_argument("--student-checkpoint", default=None,
                    help="PyTorch student run or checkpoint (default: the export's source checkpoint, if present)")
    ap.add_argument("--texts", type=int, default=500)
    ap.add_argument("--latency-texts", type=int, default=100)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--data", default=None, help="CoNLL file (default: CoNLL-2003 test when present)")
    ap.add_argument("--only", default=None, help="comma-separated configurations to run (with --sweep: "
                                                  "precisions and / or variant names)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device of the engine configurations")
    ap.add_argument("--gemm-seconds", type=float, default=3.0,
                    help="seconds per precision for the GEMM limit (0: skip it)")
    ap.add_argument("--gemm-tokens", type=int, default=1024, help="rows of the GEMM (sub-tokens of a batch)")
    ap.add_argument("--sweep", action="store_true", help="time the engine under ONNX Runtime session variants")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    ap.add_argument("--repeat", type=int, default=3,
                    help="passes over the texts per batch size; the median pass is reported (default 3)")
    ap.add_argument("--out", default=None,
                    help="output path prefix (.json, .md, .png are appended; default benchmarks/results/serving, "
                         "with --sweep benchmarks/results/serving_sweep)")
    args = ap.parse_args(argv)
    host = machine()  # the load average before this benchmark's own work adds to it
    if (args.texts < 1 or args.latency_texts < 1 or args.threads < 1 or args.gemm_tokens < 1 or args.repeat < 1
            or args.gemm_seconds < 0):
        ap.error("--texts, --latency-texts, --threads, --gemm-tokens, --repeat must be >= 1 and --gemm-seconds >= 0")
    out = Path(args.out or ROOT / "benchmarks" / "results" / ("serving_sweep" if args.sweep else "serving"))

    from export import format as fmt
    from benchmarks.texts import load_sentences
    from training.corpora import DataError

    try:
        sentences, source = load_sentences(args.texts, args.data)
    except DataError as e:  # a missing, malformed or non-UTF-8 --data file: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        manifest = fmt.read_manifest(args.export_dir)
    except fmt.ExportFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    texts = [" ".join(s) for s in sentences]
    n_words = sum(len(s) for s in sentences)
    export_dir = str(Path(args.export_dir).resolve())
    precisions = [p for p in fmt.PRECISIONS if p in manifest.get(fmt.K_PRECISIONS, [])]
    command = " ".join(["python -m benchmarks.serving_bench"] + [shlex.quote(a) for a in argv])
    limits = measure_gemm_limits(export_dir, args.threads, args.gemm_seconds, args.gemm_tokens)

    if args.sweep:
        sweep, variants = {}, sweep_variants(args.threads)
        if args.only:  # precisions and / or variant names
            wanted = set(args.only.split(","))
            precisions = [p for p in precisions if p in wanted] if wanted & set(precisions) else precisions
            variants = {k: v for k, v in variants.items() if k in wanted} if wanted & set(variants) else variants
        for prec in precisions:
            configs = {}
            for name, (opts, threads) in variants.items():
                configs[name] = {"kind": "engine", "precision": prec, "export_dir": export_dir, "device": args.device,
                                 "ort": opts, "threads": threads}
            sweep[prec] = run_configs(configs, texts, n_words, args.threads, args.latency_texts, args.timeout, "sweep",
                                      args.repeat)
            for name, r in sweep[prec].items():
                r.pop("predictions", None)
                if "error" not in r:
                    r["threads"] = configs[name]["threads"]
                    r["gemm"] = gemm_fractions(r, limits, prec)
        report = {"command": command, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "machine": host, "threads": args.threads, "export_dir": str(args.export_dir),
                  "texts": {"n": len(texts), "words": n_words, "source": source}, "gemm_limits": limits,
                  "variants": {k: {"ort": v[0], "threads": v[1]} for k, v in variants.items()},
                  "sweep": sweep, "gpu": gpu_line(args.device, {k: r for rows in sweep.values()
                                                                 for k, r in rows.items()})}
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.json").write_text(json.dumps(report, indent=2) + "\n")
        write_sweep(report, Path(f"{out}.md"))
        print(f"wrote {out}.json, {out}.md")
        return 0 if all("error" not in r for rows in sweep.values() for r in rows.values()) else 1

    student = args.student_checkpoint
    if student is None:
        src = (manifest.get(fmt.K_SOURCE) or {}).get("checkpoint")
        if src and Path(src).is_dir():
            student = src
    configs = {f"engine_{p}": {"kind": "engine", "precision": p, "device": args.device} for p in precisions}
    configs["optimum_student"] = {"kind": "optimum"}
    if student:
        configs["torch_student"] = {"kind": "torch_student", "checkpoint": str(student)}
    if args.teacher:
        configs["hf_teacher"] = {"kind": "teacher", "checkpoint": str(args.teacher)}
    if args.only:
        wanted = set(args.only.split(","))
        configs = {k: v for k, v in configs.items() if k in wanted}
    configs = {k: {**v, "export_dir": export_dir} for k, v in configs.items()}
    results = run_configs(configs, texts, n_words, args.threads, args.latency_texts, args.timeout, repeat=args.repeat)
    ref = results.get("engine_fp32", {}).get("predictions")
    for name, r in results.items():
        preds = r.pop("predictions", None)
        if ref is not None and preds is not None and "error" not in r:
            r["agreement"] = _agreement(preds, ref)
        if name.startswith("engine_") and "error" not in r:
            r["gemm"] = gemm_fractions(r, limits, configs[name]["precision"])
    ratios, summary = summarize(results)
    report = {
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": host, "threads": args.threads, "export_dir": str(args.export_dir),
        "export": {"kind": manifest.get(fmt.K_KIND), "method": manifest.get(fmt.K_METHOD),
                   "model": manifest.get(fmt.K_MODEL), "optimize": (manifest.get(fmt.K_OPTIMIZE) or {}).get("applied"),
                   "max_length": manifest.get(fmt.K_MAX_LENGTH)},
        "teacher": args.teacher, "student_checkpoint": student,
        "texts": {"n": len(texts), "words": n_words, "source": source}, "latency_texts": min(args.latency_texts,
                                                                                          len(texts)),
        "repeat": args.repeat,
        "gemm_limits": limits, "gpu": gpu_line(args.device, results),
        "results": results, "ratios": ratios, "summary": summary,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, Path(f"{out}.md"))
    plotted = plot(report, Path(f"{out}.png"))
    print(f"wrote {out}.json, {out}.md" + (f", {out}.png" if plotted else " (no matplotlib: no plot)"))
    for k, t in summary["targets"].items():
        print(f"  {k}: {t['value']} ({'met' if t['met'] else 'not met' if t['met'] is False else 'n/a'})")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
