"""Load test: the real server under many concurrent clients, with bad input mixed in.

    python -m benchmarks.serving_load EXPORT_DIR [--clients 200] [--duration 60] [--precision fp32|int8|int8-dynamic]
                                                 [--threads N] [--max-batch 32] [--max-wait-ms 5]
                                                 [--data CONLL_FILE] [--out benchmarks/results/serving_load]

Starts ``python -m serving EXPORT_DIR`` on a free port of 127.0.0.1 (always loopback: there is no
option to target another address), lets ``--clients`` concurrent clients (1..1000) send one-text
requests for ``--duration`` seconds (1..600), and meanwhile sends the whole bad-input corpus of
:mod:`serving.badinput` (repeatedly, until the time is up), checking that every case gets its
expected status. Reports errors (any non-200 answer or failed connection of a good request), latency
percentiles, throughput, the server's RSS at the start / end / peak (Linux ``/proc``), the batch sizes
seen by the server (from ``/metrics``), and writes ``OUT.json`` and ``OUT.md``.
Exit code 0 when there was no error and every bad-input case got its status, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import random
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import HOST, free_port, machine, percentile, rss_bytes
from benchmarks.texts import load_sentences
from export.format import PRECISIONS
from serving import badinput
from serving.server import Settings
from training.corpora import DataError

ROOT = Path(__file__).resolve().parents[1]
MAX_CLIENTS = 1000
MAX_DURATION = 600


def _bounded(lo, hi, kind=int):
    def parse(s):
        v = kind(s)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi}")
        return v
    return parse


class RawClient:
    """A minimal HTTP/1.1 keep-alive client (one connection) for the load: httpx costs several
    times more CPU per request, and on a small machine the load generator would measure itself."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except Exception:
                pass
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):
            reused = self.writer is not None
            if not reused:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write((f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                                   ).encode() + body)
                await self.writer.drain()
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if reused and attempt == 0:  # the server closed an idle keep-alive connection: retry once
                    continue
                raise
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
            if headers.get("connection", "").lower() == "close":
                await self.close()
            return status, data
        raise ConnectionError("unreachable")


async def _wait_healthy(client, proc, timeout=180.0):
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            r = await client.get("/healthz", timeout=2)
            if r.status_code == 200:
                return time.monotonic() - t0
        except Exception:
            pass
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("the server did not become healthy")
        await asyncio.sleep(0.2)


async def _run(args, base_url, proc, texts) -> dict:
    import httpx

    settings = Settings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client, \
            httpx.AsyncClient(base_url=base_url, timeout=120) as bad_client:
        startup = await _wait_healthy(client, proc)
        for t in texts[:20]:  # warm-up
            await client.post("/v1/ner", json={"text": t})
        rss_start = rss_bytes(proc.pid)
        latencies, errors, ok = [], [], 0
        rss_samples = []
        deadline = time.monotonic() + args.duration
        rng = random.Random(0)

        host, port = base_url.rsplit("/", 1)[1].split(":")
        bodies = [json.dumps({"text": t}).encode() for t in texts]

        async def worker(i):
            nonlocal ok
            r_ = random.Random(i)
            raw = RawClient(host, int(port))
            while time.monotonic() < deadline:
                body = bodies[r_.randrange(len(bodies))]
                t0 = time.perf_counter()
                try:
                    status, data = await raw.post("/v1/ner", body)
                    dt = time.perf_counter() - t0
                    if status == 200 and isinstance(json.loads(data).get("entities"), list):
                        ok += 1
                        latencies.append(dt)
                    else:
                        errors.append(f"status {status}: {data[:120]!r}")
                except Exception as e:
                    errors.append(f"{type(e).__name__}: {e}"[:160])
            await raw.close()

        corpus = badinput.corpus(settings)
        bad_results = {"rounds": 0, "sent": 0, "failures": [], "statuses": {}}

        async def bad_sender():
            while True:
                order = list(corpus)
                rng.shuffle(order)
                for case in order:
                    try:
                        r = await badinput.asend(bad_client, case)
                        problem = badinput.check_response(case, r)
                        bad_results["statuses"][str(r.status_code)] = bad_results["statuses"].get(
                            str(r.status_code), 0) + 1
                    except Exception as e:
                        problem = f"{case.name}: {type(e).__name__}: {e}"[:200]
                    bad_results["sent"] += 1
                    if problem:
                        bad_results["failures"].append(problem)
                    await asyncio.sleep(0.01)
                bad_results["rounds"] += 1
                if time.monotonic() >= deadline:
                    return

        async def sampler():
            while time.monotonic() < deadline:
                rss_samples.append(rss_bytes(proc.pid).get("rss"))
                await asyncio.sleep(1.0)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(args.clients)), bad_sender(), sampler())
        wall = time.perf_counter() - t_start
        after = await client.post("/v1/ner", json={"text": "Angela Merkel visited Paris ."})
        metrics = (await client.get("/metrics")).text
        rss_end = rss_bytes(proc.pid)

    def metric(pattern):
        m = re.search(pattern, metrics, re.M)
        return float(m.group(1)) if m else None

    batches = metric(r"^ner_batch_size_count (\S+)$")
    batch_texts = metric(r"^ner_batch_size_sum (\S+)$")
    server_5xx = sum(int(v) for s, v in re.findall(r'^ner_requests_total\{[^}]*status="(5\d\d)"\} (\d+)$',
                                                  metrics, re.M))
    lat_ms = [x * 1000 for x in latencies]
    steady = [x for x in rss_samples if x is not None]
    return {
        "startup_seconds": round(startup, 2),
        "wall_seconds": round(wall, 2),
        "requests_ok": ok,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:20],
        "throughput_rps": round(ok / wall, 1),
        "latency_ms": {**{f"p{q}": _r(percentile(lat_ms, q)) for q in (50, 95, 99)},
                       "max": _r(max(lat_ms) if lat_ms else None),
                       "mean": _r(sum(lat_ms) / len(lat_ms) if lat_ms else None)},
        "rss_bytes": {"start": rss_start.get("rss"), "end": rss_end.get("rss"), "peak": rss_end.get("peak"),
                      "growth": (rss_end["rss"] - rss_start["rss"]) if rss_start and rss_end else None,
                      # after the first 10% of the run (arenas sized for full batches, connections open)
                      "growth_after_warmup": (rss_end["rss"] - steady[len(steady) // 10])
                      if steady and rss_end else None,
                      "samples": [s for s in rss_samples if s is not None][:: max(1, len(rss_samples) // 60)]},
        "server": {"batches": batches, "mean_batch_size": _r(batch_texts / batches if batches else None),
                   "responses_5xx": server_5xx},
        "alive_after": after.status_code == 200,
        "bad_input": {"cases": sum(c.bad for c in corpus), "edge_cases": sum(not c.bad for c in corpus),
                      "expected_statuses": sorted({c.expect for c in corpus}), **bad_results},
    }


def _r(x, nd=2):
    return None if x is None else round(float(x), nd)


def write_markdown(res: dict, path: Path) -> None:
    lat, rss, bad = res["latency_ms"], res["rss_bytes"], res["bad_input"]
    mb = lambda b: "n/a" if b is None else f"{b / 2**20:.1f} MB"  # noqa: E731
    lines = [
        "# Serving load test", "",
        f"- command: `{res['command']}`",
        f"- date: {res['date']}",
        f"- machine: {res['machine']['platform']}, {res['machine']['cpu']}, {res['machine']['cpu_count']} CPUs, "
        f"onnxruntime {res['machine']['onnxruntime']}, load average at start {res['machine']['loadavg_at_start']}",
        f"- export: `{res['export_dir']}` ({res['precision']}), server settings: {res['settings']}",
        f"- texts: {res['texts_source']}", "",
        "| clients | duration s | ok requests | errors | req/s | p50 ms | p95 ms | p99 ms | max ms | mean batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {res['clients']} | {res['wall_seconds']} | {res['requests_ok']} | {res['errors']} | "
        f"{res['throughput_rps']} | {lat['p50']} | {lat['p95']} | {lat['p99']} | {lat['max']} | "
        f"{res['server']['mean_batch_size']} |", "",
        f"- server RSS: start {mb(rss['start'])} (after 20 warm-up requests), end {mb(rss['end'])}, growth "
        f"{mb(rss['growth'])} ({mb(rss['growth_after_warmup'])} after the first 10% of the run), "
        f"peak {mb(rss['peak'])}",
        f"- server 5xx responses: {res['server']['responses_5xx']}; still answering afterwards: {res['alive_after']}",
        f"- bad input: {bad['cases']} bad cases (expected 4xx) + {bad['edge_cases']} odd-but-valid cases (200), "
        f"sent {bad['sent']} times in {bad['rounds']} rounds during the load; statuses {bad['statuses']}; "
        f"failures: {len(bad['failures'])}",
    ]
    if bad["failures"]:
        lines += ["", "## Bad-input failures", ""] + [f"- {f}" for f in sorted(set(bad["failures"]))[:50]]
    if res["error_samples"]:
        lines += ["", "## Error samples", ""] + [f"- {e}" for e in res["error_samples"]]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.serving_load", description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", metavar="EXPORT_DIR")
    ap.add_argument("--clients", type=_bounded(1, MAX_CLIENTS), default=200)
    ap.add_argument("--duration", type=_bounded(1, MAX_DURATION, float), default=60.0, help="seconds")
    ap.add_argument("--precision", choices=list(PRECISIONS), default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--texts", type=_bounded(1, 100_000), default=1000, help="distinct texts to cycle through")
    ap.add_argument("--data", default=None, help="CoNLL file for the texts (default: CoNLL-2003 test if present)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving_load"),
                    help="output path prefix (.json and .md are appended)")
    args = ap.parse_args(argv)
    try:
        sentences, source = load_sentences(args.texts, args.data, allow_training_import=False)
    except DataError as e:  # a missing, malformed or non-UTF-8 --data file: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    texts = [" ".join(s) for s in sentences]
    info = machine()  # before the server starts: the load average is the machine's, not ours
    port = free_port()
    cmd = [sys.executable, "-m", "serving", str(args.export_dir), "--host", HOST, "--port", str(port),
           "--precision", args.precision, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
           "--log-level", "warning"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    log = tempfile.TemporaryFile("w+")  # the server's output, shown if it fails
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        res = asyncio.run(_run(args, f"http://{HOST}:{port}", proc, texts))
    except Exception as e:
        log.seek(0)
        print(f"error: {e}\n{log.read()[-2000:]}", file=sys.stderr)
        return 1
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    res.update(command=" ".join(["python -m benchmarks.serving_load"]
                                + [shlex.quote(a) for a in (argv or sys.argv[1:])]),
               date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), machine=info,
               export_dir=str(args.export_dir), precision=args.precision, clients=args.clients,
               duration=args.duration, texts_source=source,
               settings={"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "threads": args.threads})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out) + ".json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(res, Path(str(out) + ".md"))
    bad = res["bad_input"]
    print(f"{res['requests_ok']} ok requests, {res['errors']} errors, {res['throughput_rps']} req/s, "
          f"p99 {res['latency_ms']['p99']} ms, RSS growth "
          f"{(res['rss_bytes']['growth'] or 0) / 2**20:.1f} MB, mean batch {res['server']['mean_batch_size']}; "
          f"bad input: {bad['cases']} cases x {bad['rounds']} rounds, {len(bad['failures'])} failures")
    print(f"wrote {out}.json and {out}.md")
    return 0 if res["errors"] == 0 and not bad["failures"] and res["alive_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
