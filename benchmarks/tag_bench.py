"""Throughput and memory of bulk tagging (``python -m serving.tag``) with 1 and 2 workers.

Usage::

    python -m benchmarks.tag_bench --export runs/student/onnx [--data-dir ../shared/data]
        [--sentences 100000] [--workers 1 2] [--threads 1] [--batch-size 256] [--precision fp32]
        [--out benchmarks/results]

Builds the CoNLL-2003 test sentences (``DATA_DIR/conll2003/test.txt``, read in place) repeated
to ``--sentences`` lines as a text file (one sentence per line, words joined by spaces) in a
temporary directory -- never in the repository -- and tags it with ``python -m serving.tag``,
each configuration in a fresh process. Also tags a tenth of the corpus with the first worker
count: peak RSS should not depend on the input's size (the tool streams).

Per configuration: wall time of the whole command (start-up and model loading included) and
documents/s over it, the documents/s the tool reports (tagging only), the peak RSS of the whole
process tree (the sum of the RSS of the command and its workers, sampled every 50 ms from
``/proc``; Linux), and whether the outputs of all worker counts are byte-identical. Writes
``tag.json`` and ``tag.md`` to ``--out``. Without the data it prints why and exits 0. Run it on
an idle machine: it warns when the load average is high.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, rss_bytes
from benchmarks.texts import read_conll_words

ROOT = Path(__file__).resolve().parents[1]


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from ``/proc/*/stat``)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def run_tag(cmd: list[str]) -> dict:
    """Run one ``serving.tag`` command; wall time, its summary line, peak RSS of its process tree."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_sum, peak_hwm = 0, {}
    while p.poll() is None:
        total = 0
        for pid in tree(p.pid):
            r = rss_bytes(pid)
            total += r.get("rss", 0)
            if "peak" in r:
                peak_hwm[pid] = r["peak"]
        peak_sum = max(peak_sum, total)
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    err = p.stderr.read()
    if p.returncode != 0:
        raise SystemExit(f"error: {shlex.join(cmd)} failed ({p.returncode}): {err.strip()[-500:]}")
    m = re.search(r"tagged (\d+) documents in ([\d.]+) s \(([\d.]+) documents/s", err)
    return {"wall_seconds": round(wall, 2), "tool_seconds": float(m.group(2)) if m else None,
            "documents": int(m.group(1)) if m else None,
            "documents_per_second_tagging": float(m.group(3)) if m else None,
            "peak_rss_tree_bytes": peak_sum,
            # an upper bound: every process's own peak, added (peaks of different moments)
            "peak_rss_sum_of_process_peaks_bytes": sum(peak_hwm.values()), "processes_seen": len(peak_hwm)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", default="runs/student/onnx")
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--sentences", type=int, default=100_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per worker")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if args.sentences < 10 or min(args.workers) < 1 or args.threads < 1:
        print("error: --sentences >= 10, --workers >= 1, --threads >= 1", file=sys.stderr)
        return 2
    test = args.data_dir / "conll2003" / "test.txt"
    if not test.is_file():
        print(f"skipped: {test} not found (pass --data-dir with conll2003/test.txt)", file=sys.stderr)
        return 0
    if not Path(args.export, "manifest.json").is_file():
        print(f"error: {args.export}: not an export (python -m export.onnx RUN_DIR)", file=sys.stderr)
        return 2
    info = machine()
    if info["loadavg_at_start"] and info["loadavg_at_start"][0] > 0.5:
        print(f"warning: load average {info['loadavg_at_start']}: timings will be low", file=sys.stderr)
    sents = [" ".join(s) for s in read_conll_words(test)]
    results = []
    with tempfile.TemporaryDirectory(prefix="tag_bench_") as tmp:
        tmp = Path(tmp)
        corpora = {}
        for name, n in (("full", args.sentences), ("tenth", max(1, args.sentences // 10))):
            corpora[name] = tmp / f"{name}.txt"
            with open(corpora[name], "w", encoding="utf-8") as f:
                for i in range(n):
                    f.write(sents[i % len(sents)] + "\n")
        configs = [("full", w) for w in args.workers] + [("tenth", args.workers[0])]
        for corpus, workers in configs:
            out = tmp / f"out_{corpus}_w{workers}.jsonl"
            cmd = [sys.executable, "-m", "serving.tag", str(corpora[corpus]), "--export", str(args.export),
                   "--out", str(out), "--workers", str(workers), "--threads", str(args.threads),
                   "--batch-size", str(args.batch_size), "--precision", args.precision]
            print(f"{corpus} corpus, {workers} worker(s) ...", file=sys.stderr, flush=True)
            r = run_tag(cmd)
            n = args.sentences if corpus == "full" else max(1, args.sentences // 10)
            r.update(corpus=corpus, sentences=n, input_bytes=corpora[corpus].stat().st_size, workers=workers,
                     threads_per_worker=args.threads, output_bytes=out.stat().st_size,
                     documents_per_second_end_to_end=round(n / r["wall_seconds"], 1))
            results.append((r, out))
            print(f"  {r['documents_per_second_end_to_end']} documents/s end to end, "
                  f"{r['documents_per_second_tagging']} tagging, peak RSS {r['peak_rss_tree_bytes'] / 2**20:.0f} MB",
                  file=sys.stderr, flush=True)
        fulls = [out.read_bytes() for r, out in results if r["corpus"] == "full"]
        identical = all(b == fulls[0] for b in fulls)
    report = {
        "command": "python -m benchmarks.tag_bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info, "export": str(args.export), "precision": args.precision, "batch_size": args.batch_size,
        "source": f"CoNLL-2003 test ({test}, {len(sents)} sentences) repeated to {args.sentences} lines",
        "outputs_identical_across_workers": identical,
        "results": [r for r, _ in results],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tag.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "tag.md").write_text(markdown(report))
    print(f"wrote {args.out / 'tag.md'} and tag.json", file=sys.stderr)
    return 0


def markdown(rep: dict) -> str:
    m = rep["machine"]

    def mb(x):
        return f"{x / 2**20:.0f}"

    lines = ["# Bulk tagging (`python -m serving.tag`)", "",
             f"- command: `{rep['command']}`", f"- date: {rep['date']}",
             f"- machine: {m['platform']}, {m['cpu']}, {m['cpu_count']} CPUs, Python {m['python']}, onnxruntime "
             f"{m['onnxruntime']}, load average at start {m['loadavg_at_start']}",
             f"- export: `{rep['export']}` ({rep['precision']}), chunks of {rep['batch_size']} documents",
             f"- input: {rep['source']}, one sentence per line (txt in, JSONL out)",
             f"- outputs of all worker counts byte-identical: {rep['outputs_identical_across_workers']}", "",
             "| input | sentences | input MB | workers | threads/worker | wall s | docs/s end to end | docs/s tagging "
             "| peak RSS (tree) MB | sum of process peaks MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rep["results"]:
        lines.append(f"| {r['corpus']} | {r['sentences']} | {r['input_bytes'] / 2**20:.2f} | {r['workers']} | "
                     f"{r['threads_per_worker']} | {r['wall_seconds']} | {r['documents_per_second_end_to_end']} | "
                     f"{r['documents_per_second_tagging']} | {mb(r['peak_rss_tree_bytes'])} | "
                     f"{mb(r['peak_rss_sum_of_process_peaks_bytes'])} |")
    lines += ["", "End to end includes start-up and model loading (one engine per worker; with several workers "
              "the main process also loads one briefly to check the export); *tagging* is the tool's own "
              "documents/s, timed after the main process has loaded the model (worker start-up included). Peak RSS (tree) is the largest sum of the RSS of the "
              "command and its workers over 50 ms samples; the sum of process peaks adds each process's own "
              "peak (an upper bound). The `tenth` row tags a tenth of the corpus: its peak RSS close to the "
              "full corpus's shows that memory does not grow with the input.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
