"""Step cost of each distillation method on the same batches: time, peak memory, tokens/s.

    python -m benchmarks.distill_cost [--teacher runs/teacher] [--steps 30] [--batch-size 16]

``msd`` is MSD with ``training.distill``'s default settings (read from ``DistillArgs``: factorised
meta-gradient, a meta step every ``--meta-every`` student steps, teacher anchor, ...); ``msd-every1``
(``msd-every3``) the same with a meta step before every (every third) student step; ``msd-second-order`` the second-order
meta-gradient before every step (the previous default).

Times come from one process that runs every method round-robin on the same batches (whatever else the
machine does slows all methods alike); peak RSS from each method alone in a fresh subprocess. Data: the
default dataset's train split: a 6-layer teacher (a trained run if given, else the packaged MiniLM with a fresh
head: the cost does not depend on the weights) and a 3-layer student initialised from it. Reports
seconds per step (mean and median: with ``--meta-every 2`` every other MSD step is a plain one, so the
ratios use the mean), training tokens/s, peak RSS and peak RSS above the after-load baseline, and the
ratios of each MSD variant to ``pos`` (issue 15's targets: <= 2.5x time, <= 2x peak memory).
"""

from __future__ import annotations

import argparse
import dataclasses
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

METHODS = ("none", "topk", "pos", "struct", "msd", "msd-every1", "msd-every3", "msd-second-order")
MSD_VARIANTS = {"msd": {}, "msd-every1": {"meta_every": 1}, "msd-every3": {"meta_every": 3},
                "msd-second-order": {"meta_every": 1, "meta_grad": "second-order"}}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _setup(method: str, teacher_path: str | None, batch_size: int, n_batches: int, pilot_params: str):
    """Teacher, 3-layer student, optimizers, the batches and a ``step(i)`` closure for one method."""
    import torch

    from training import corpora
    from training import data as data_lib
    from training import distill, losses, meta, trainer
    from training import model as model_lib

    if teacher_path:  # the teacher's own dataset
        teacher, tok, info = model_lib.load(teacher_path)
        splits = corpora.load_dataset(info["args"]["dataset"], data_dir=info["args"].get("data_dir"))
    else:
        splits = corpora.load_dataset("default")
        torch.manual_seed(0)
        teacher = model_lib.BertCrf.from_encoder("default", splits.labels)
        tok = model_lib.load_tokenizer("default")
    torch.manual_seed(0)
    student = distill.shrink(teacher, distill.layer_map(teacher.num_layers, teacher.num_layers // 2))
    teacher.eval()
    teacher.requires_grad_(False)
    train, hold = distill.split_holdout(splits.train, 0.1)
    l2i = {l: i for i, l in enumerate(teacher.labels)}
    enc = data_lib.encode(train, tok, l2i)
    qenc = data_lib.encode(hold, tok, l2i)
    batches = list(distill.paired_batches(enc, enc, batch_size, True, 0, bucket=True))[:n_batches]
    quizzes = list(distill.paired_batches(qenc, qenc, batch_size, True, 0, bucket=True))  # as training.distill
    opt = trainer.make_optimizer(student, 5e-5, 1e-3, 0.01)
    kd = "pos" if method in MSD_VARIANTS else method
    msd = None
    if method in MSD_VARIANTS:  # training.distill's defaults, but for the variant's own settings
        d = dataclasses.replace(distill.DistillArgs(), pilot_params=pilot_params, **MSD_VARIANTS[method])
        cfg = meta.MetaConfig(d.kd_loss, d.alpha, d.temperature, d.pilot_lr, d.teacher_grad_clip, d.pilot_params,
                              d.meta_grad, d.teacher_anchor, d.teacher_anchor_weight)
        msd = meta.MetaTeacher(teacher, cfg, lr=d.teacher_lr, total_steps=n_batches, warmup_ratio=0.1,
                               params=d.teacher_params, meta_every=d.meta_every)

    def step(i: int) -> int:
        batch = batches[i]
        s_pot = None
        if msd and msd.due(i):
            _, s_pot = msd.step(student, batch, quizzes[i % len(quizzes)])
        targets = None
        if kd != "none":
            with torch.no_grad():
                t_pot = teacher(batch["teacher"])
            targets = losses.teacher_targets(kd, t_pot)
        if s_pot is None:
            s_pot = student(batch["student"])
        loss, _ = losses.distill_loss(kd, s_pot, batch["labels"], targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return int(batch["student"]["attention_mask"].sum())

    return step, teacher.num_layers, student.num_layers


def worker(method: str, teacher_path: str | None, steps: int, batch_size: int, threads: int, warmup: int,
           pilot_params: str) -> dict:
    """Peak memory of one method, alone in this process."""
    import torch

    torch.set_num_threads(threads)
    step, tl, sl = _setup(method, teacher_path, batch_size, steps + warmup, pilot_params)
    base = _rss_mb()
    for i in range(steps + warmup):
        step(i)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "peak_rss_mb": peak, "baseline_rss_mb": base, "peak_above_baseline_mb": peak - base,
            "teacher_layers": tl, "student_layers": sl}


def interleaved(methods: list[str], teacher_path, steps, batch_size, threads, warmup, pilot_params) -> dict:
    """Time per step of every method in one process, round-robin on the same batches, so that
    whatever else the machine does affects all methods alike."""
    import torch

    torch.set_num_threads(threads)
    steppers = {m: _setup(m, teacher_path, batch_size, steps + warmup, pilot_params)[0] for m in methods}
    times = {m: [] for m in methods}
    tokens = {m: 0 for m in methods}
    for i in range(steps + warmup):
        for m, step in steppers.items():
            t0 = time.perf_counter()
            n = step(i)
            if i >= warmup:
                times[m].append(time.perf_counter() - t0)
                tokens[m] += n
    return {m: {"median_step_s": statistics.median(times[m]), "mean_step_s": statistics.fmean(times[m]),
                "tokens_per_second": tokens[m] / sum(times[m]), "steps": len(times[m])} for m in methods}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="trained teacher run (default: fresh head on MiniLM)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="benchmarks/results/distill_cost")
    ap.add_argument("--pilot-params", default="all", help="MSD pilot parameters: all | top | head")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--interleaved", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    if args.worker:
        print(json.dumps(worker(args.worker, args.teacher, args.steps, args.batch_size, args.threads, args.warmup,
                                args.pilot_params)))
        return 0
    if args.interleaved:
        print(json.dumps(interleaved(methods, args.teacher, args.steps, args.batch_size, args.threads, args.warmup,
                                     args.pilot_params)))
        return 0

    def child(*extra) -> dict:
        cmd = [sys.executable, "-m", "benchmarks.distill_cost", *extra, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--pilot-params", args.pilot_params, "--methods", args.methods]
        if args.teacher:
            cmd += ["--teacher", args.teacher]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    timing = child("--interleaved")
    results = []
    for m in methods:
        r = child("--worker", m) | timing[m]
        print(f"{m:>16}: {r['mean_step_s'] * 1000:8.1f} ms/step (mean)  {r['tokens_per_second']:7.0f} tok/s  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB (+{r['peak_above_baseline_mb']:.0f} MB over baseline)")
        results.append(r)

    by = {r["method"]: r for r in results}
    ratios = {}
    for v in (m for m in MSD_VARIANTS if m in by and "pos" in by):
        ratios[v] = {
            "time": by[v]["mean_step_s"] / by["pos"]["mean_step_s"],
            "peak_rss": by[v]["peak_rss_mb"] / by["pos"]["peak_rss_mb"],
            "peak_above_baseline": by[v]["peak_above_baseline_mb"] / max(by["pos"]["peak_above_baseline_mb"], 1e-9),
        }
    import torch

    from training.distill import DistillArgs

    d = DistillArgs()
    meta_info = {
        "command": "python -m benchmarks.distill_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads",
        "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
        "teacher": args.teacher or "packaged MiniLM-L6 + fresh head",
        "pilot_params": args.pilot_params,
        "msd_defaults": {k: getattr(d, k) for k in ("meta_grad", "meta_every", "teacher_params", "teacher_anchor",
                                                    "teacher_anchor_weight", "teacher_lr", "pilot_lr")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta_info, "results": results, "ratios": ratios}, indent=2) + "\n")
    lines = [
        "# Distillation step cost per method",
        "",
        f"- command: `{meta_info['command']}`",
        f"- date: {meta_info['date']}",
        f"- machine: {meta_info['machine']}",
        f"- {args.steps} timed steps (after {args.warmup} warm-up) of batch {args.batch_size} on the teacher's "
        f"dataset's train split (the default dataset without --teacher), the same batches for every method; teacher {results[0]['teacher_layers']} layers "
        f"({meta_info['teacher']}), student {results[0]['student_layers']} layers; MSD pilot parameters: "
        f"`{args.pilot_params}`; MSD defaults (`msd`): "
        + ", ".join(f"{k} {v}" for k, v in meta_info["msd_defaults"].items())
        + ". Times: all methods round-robin in one process (same batches, same machine "
        "load); peak RSS: each method alone in its own process.",
        "",
        "| method | mean s/step | median s/step | tokens/s | peak RSS (MB) | peak above baseline (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['method']} | {r['mean_step_s']:.3f} | {r['median_step_s']:.3f} | {r['tokens_per_second']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['peak_above_baseline_mb']:.0f} |")
    if ratios:
        lines.append("")
    for v, q in ratios.items():
        lines.append(f"- {v} / pos: time per step (mean) **{q['time']:.2f}x**"
                     + (f" (target <= 2.5x: {'met' if q['time'] <= 2.5 else 'MISSED'})" if v == "msd" else "")
                     + f", peak RSS **{q['peak_rss']:.2f}x**"
                     + (f" (target <= 2x: {'met' if q['peak_rss'] <= 2 else 'MISSED'})" if v == "msd" else "")
                     + f", peak above the after-load baseline {q['peak_above_baseline']:.2f}x")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(ratios):]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
