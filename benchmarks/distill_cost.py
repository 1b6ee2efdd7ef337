"""Step cost of each distillation method on the same batches: time, peak memory, tokens/s.

    python -m benchmarks.distill_cost [--teacher runs/teacher] [--steps 30] [--batch-size 16]

Each method runs in a fresh subprocess (so peak RSS is its own) on the same batches of the default
dataset's train split: a 6-layer teacher (a trained run if given, else the packaged MiniLM with a fresh
head: the cost does not depend on the weights) and a 3-layer student initialised from it. Reports
seconds per step (median), training tokens/s, peak RSS and peak RSS above the after-load baseline, and
the ratios of ``msd`` to ``pos`` (issue targets: <= 3x time, <= 2.5x peak memory).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("none", "topk", "pos", "struct", "msd")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(method: str, teacher_path: str | None, steps: int, batch_size: int, threads: int, warmup: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from training import data as data_lib
    from training import distill, losses, meta, trainer
    from training import model as model_lib

    splits = data_lib.load_dataset("default")
    if teacher_path:
        teacher, tok, _ = model_lib.load(teacher_path)
    else:
        torch.manual_seed(0)
        teacher = model_lib.BertCrf.from_encoder("default", splits.labels)
        tok = model_lib.load_tokenizer("default")
    labels = teacher.labels
    torch.manual_seed(0)
    student = distill.shrink(teacher, distill.layer_map(teacher.num_layers, teacher.num_layers // 2))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(method == "msd")
    train, hold = distill.split_holdout(splits.train, 0.1)
    l2i = {l: i for i, l in enumerate(labels)}
    enc = data_lib.encode(train, tok, l2i)
    qenc = data_lib.encode(hold, tok, l2i)
    batches = list(distill.paired_batches(enc, enc, batch_size, True, 0, bucket=True))[: steps + warmup]
    quizzes = list(distill.paired_batches(qenc, qenc, batch_size, True, 0))
    opt = trainer.make_optimizer(student, 5e-5, 1e-3, 0.01)
    kd = {"msd": "pos"}.get(method, method)
    cfg = meta.MetaConfig("pos") if method == "msd" else None
    t_opt = trainer.adam(list(teacher.parameters()), lr=2e-5) if cfg else None
    base = _rss_mb()
    times, tokens = [], 0
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        if cfg:
            meta.teacher_step(student, teacher, t_opt, batch, quizzes[i % len(quizzes)], cfg)
        targets = None
        if kd != "none":
            with torch.no_grad():
                t_pot = teacher(batch["teacher"])
            targets = losses.teacher_targets(kd, t_pot)
        loss, _ = losses.distill_loss(kd, student(batch["student"]), batch["labels"], targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            tokens += int(batch["student"]["attention_mask"].sum())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "method": method,
        "steps": len(times),
        "median_step_s": statistics.median(times),
        "mean_step_s": statistics.fmean(times),
        "tokens_per_second": tokens / sum(times),
        "peak_rss_mb": peak,
        "baseline_rss_mb": base,
        "peak_above_baseline_mb": peak - base,
        "teacher_layers": teacher.num_layers,
        "student_layers": student.num_layers,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="trained teacher run (default: fresh head on MiniLM)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="benchmarks/results/distill_cost")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.teacher, args.steps, args.batch_size, args.threads, args.warmup)))
        return 0

    results = []
    for m in args.methods.split(","):
        cmd = [sys.executable, "-m", "benchmarks.distill_cost", "--worker", m, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        if args.teacher:
            cmd += ["--teacher", args.teacher]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{m:>7}: {r['median_step_s'] * 1000:8.1f} ms/step  {r['tokens_per_second']:7.0f} tok/s  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB (+{r['peak_above_baseline_mb']:.0f} MB over baseline)")
        results.append(r)

    by = {r["method"]: r for r in results}
    ratios = {}
    if "msd" in by and "pos" in by:
        ratios = {
            "msd_over_pos_time": by["msd"]["median_step_s"] / by["pos"]["median_step_s"],
            "msd_over_pos_peak_rss": by["msd"]["peak_rss_mb"] / by["pos"]["peak_rss_mb"],
            "msd_over_pos_peak_above_baseline": by["msd"]["peak_above_baseline_mb"] / max(by["pos"]["peak_above_baseline_mb"], 1e-9),
        }
    import torch

    meta_info = {
        "command": "python -m benchmarks.distill_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads",
        "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
        "teacher": args.teacher or "packaged MiniLM-L6 + fresh head",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta_info, "results": results, "ratios": ratios}, indent=2) + "\n")
    lines = [
        "# Distillation step cost per method",
        "",
        f"- command: `{meta_info['command']}`",
        f"- date: {meta_info['date']}",
        f"- machine: {meta_info['machine']}",
        f"- {args.steps} timed steps (after {args.warmup} warm-up) of batch {args.batch_size} on the default "
        f"dataset's train split, the same batches for every method; teacher {results[0]['teacher_layers']} layers "
        f"({meta_info['teacher']}), student {results[0]['student_layers']} layers; each method in its own process.",
        "",
        "| method | median s/step | tokens/s | peak RSS (MB) | peak above baseline (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['method']} | {r['median_step_s']:.3f} | {r['tokens_per_second']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['peak_above_baseline_mb']:.0f} |")
    if ratios:
        t, m = ratios["msd_over_pos_time"], ratios["msd_over_pos_peak_rss"]
        lines += ["", f"- msd / pos time per step: **{t:.2f}x** (target <= 3x: {'met' if t <= 3 else 'MISSED'})",
                  f"- msd / pos peak RSS: **{m:.2f}x** (target <= 2.5x: {'met' if m <= 2.5 else 'MISSED'}); "
                  f"peak above the after-load baseline: {ratios['msd_over_pos_peak_above_baseline']:.2f}x"]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-3:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
