"""What the benchmarks share: a free loopback port, percentiles, process memory, the machine description and
matplotlib without a screen."""

from __future__ import annotations

import os
import platform
import re
import socket
from pathlib import Path

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def percentile(values, q: float):
    """The ``q``-th percentile (0..100) of ``values``, nearest rank; ``None`` for no values."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def rss_bytes(pid: int) -> dict:
    """Current and peak resident set size of a process (Linux), in bytes; ``{}`` elsewhere."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for key, name in (("VmRSS", "rss"), ("VmHWM", "peak")):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m:
            out[name] = int(m.group(1)) * 1024
    return out


def machine() -> dict:
    """The machine a result was measured on: platform, CPU model, cores, Python, onnxruntime, and the
    load average at start (a busy machine gives low figures)."""
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        ort_version = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "onnxruntime": ort_version, "loadavg_at_start": load}


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no screen), or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
