"""CPU speed of training.crf vs pytorch-crf (``torchcrf.CRF``) on the same input.

Usage::

    python -m benchmarks.crf_speed [--batch 32] [--length 64] [--labels 9] [--repeats 50] [--out benchmarks/results]

Times (median and mean over ``--repeats`` runs after warm-up, ``torch.set_num_threads(2)``):

* ``nll(...).sum()`` forward + backward (ours) vs ``-torchcrf.CRF(...)(..., reduction='sum')``
  forward + backward, with identical potentials (pytorch-crf's ``transitions`` use the same
  ``[from, to]`` convention; its ``start_transitions`` / ``end_transitions`` are our ``start`` /
  ``end``; with ``batch_first=True`` its mask is ``(B, N)`` like ours). The two log-likelihoods
  are asserted to agree to 1e-4 before timing.
* ``marginals`` (ours), ``viterbi`` (ours) and ``torchcrf.CRF.decode`` for reference.

Writes ``crf_speed.json`` and ``crf_speed.md`` to ``--out``.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from training.crf import marginals, nll, viterbi


def timeit(fn, repeats, warmup=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "mean_ms": statistics.fmean(times),
            "min_ms": min(times), "repeats": repeats}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--labels", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)

    import torchcrf  # package pytorch-crf

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    B, N, L = args.batch, args.length, args.labels
    lengths = torch.randint(1, N + 1, (B,))
    lengths[0] = N
    mask = torch.arange(N)[None, :] < lengths[:, None]  # (B, N) bool, left-aligned
    emissions = torch.randn(B, N, L, requires_grad=True)
    tags = torch.randint(0, L, (B, N))
    transitions, start, end = (torch.empty(*s).uniform_(-0.5, 0.5).requires_grad_() for s in ((L, L), (L,), (L,)))

    ref = torchcrf.CRF(L, batch_first=True)
    with torch.no_grad():
        ref.transitions.copy_(transitions)
        ref.start_transitions.copy_(start)
        ref.end_transitions.copy_(end)
    ref_emissions = emissions.detach().clone().requires_grad_()

    ours_llh = -nll(emissions, tags, mask, transitions, start, end).sum()
    ref_llh = ref(ref_emissions, tags, mask=mask, reduction="sum")
    diff = abs(ours_llh.item() - ref_llh.item())
    assert diff < 1e-4 * max(1.0, abs(ref_llh.item())), (ours_llh.item(), ref_llh.item())

    def ours_fb():
        nll(emissions, tags, mask, transitions, start, end).sum().backward()

    def ref_fb():
        (-ref(ref_emissions, tags, mask=mask, reduction="sum")).backward()

    r = args.repeats
    results = {
        "nll_fwd_bwd_ours": timeit(ours_fb, r),
        "nll_fwd_bwd_pytorch_crf": timeit(ref_fb, r),
        "marginals_ours": timeit(lambda: marginals(emissions, mask, transitions, start, end), r),
        "viterbi_ours": timeit(lambda: viterbi(emissions, mask, transitions, start, end), r),
        "decode_pytorch_crf": timeit(lambda: ref.decode(ref_emissions.detach(), mask=mask), r),
    }
    ratio = results["nll_fwd_bwd_ours"]["median_ms"] / results["nll_fwd_bwd_pytorch_crf"]["median_ms"]
    vit_ratio = results["viterbi_ours"]["median_ms"] / results["decode_pytorch_crf"]["median_ms"]

    command = "python -m benchmarks.crf_speed " + " ".join(sys.argv[1:] if argv is None else argv)
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "python": platform.python_version(), "nproc": os.cpu_count(), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(), "pytorch_crf": getattr(torchcrf, "__version__", "?")}
    report = {"command": command.strip(), "date": date, "machine": machine,
              "config": {"batch": B, "length": N, "labels": L, "seed": args.seed, "dtype": "float32",
                         "lengths": lengths.tolist()},
              "log_likelihood": {"ours": ours_llh.item(), "pytorch_crf": ref_llh.item(), "abs_diff": diff},
              "results": results, "ratio_nll_fwd_bwd_ours_over_pytorch_crf": ratio,
              "ratio_viterbi_ours_over_pytorch_crf_decode": vit_ratio}

    rows = [("nll forward+backward", "ours", "nll_fwd_bwd_ours"),
            ("nll forward+backward", "pytorch-crf", "nll_fwd_bwd_pytorch_crf"),
            ("marginals (autograd of log Z)", "ours", "marginals_ours"),
            ("viterbi", "ours", "viterbi_ours"),
            ("viterbi (decode)", "pytorch-crf", "decode_pytorch_crf")]
    md = [f"# CRF speed (CPU, B={B}, N={N}, L={L}, {torch.get_num_threads()} threads)", "",
          f"- command: `{report['command']}`", f"- date: {date}",
          f"- machine: {machine['platform']}, nproc={machine['nproc']}, torch {machine['torch']}, "
          f"pytorch-crf {machine['pytorch_crf']}",
          f"- log-likelihood ours {ours_llh.item():.4f} vs pytorch-crf {ref_llh.item():.4f} (|diff| {diff:.2e})", "",
          "| op | impl | median ms | mean ms | min ms |", "|---|---|---:|---:|---:|"]
    md += [f"| {op} | {impl} | {results[key]['median_ms']:.2f} | {results[key]['mean_ms']:.2f} "
           f"| {results[key]['min_ms']:.2f} |" for op, impl, key in rows]
    md += ["", f"ratio ours / pytorch-crf (nll forward+backward, median): **{ratio:.2f}**",
           f"ratio ours / pytorch-crf (viterbi vs decode, median): **{vit_ratio:.2f}**", ""]
    text = "\n".join(md)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "crf_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "crf_speed.md").write_text(text)


if __name__ == "__main__":
    main()
