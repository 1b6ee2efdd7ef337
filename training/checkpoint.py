"""The checkpoint format: defined once, read by training, export, serving and the demo.

A *run directory* (``runs/teacher``, ``runs/student``) looks like::

    runs/teacher/
      best/                 the checkpoint (best on dev) -- what every later stage reads
        config.json         Hugging Face config with id2label / label2id
        model.safetensors   encoder + token-classification head (plain AutoModelForTokenClassification)
        tokenizer.json ...  the fast tokenizer files
        crf.safetensors     CRF parameters: transitions (L, L) [from, to], start (L,), end (L,)
        run.json            format tag, kind, labels, training arguments, metrics, provenance
      last/                 resume state (same checkpoint + optimizer.safetensors + trainer_state.json)
      log.jsonl             one JSON object per logged step / epoch
      metrics.json          evaluation results, by split

``AutoModelForTokenClassification.from_pretrained("runs/teacher/best")`` loads the encoder and
head with plain transformers; the CRF lives beside it. Every directory is written to a temporary
sibling and renamed into place (:func:`atomic_dir`), so a crash never leaves a half-written
checkpoint. This module imports neither torch nor transformers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

FORMAT = "msd-ner-checkpoint"
FORMAT_VERSION = 1
CRF_FILE = "crf.safetensors"
RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
BEST = "best"
LAST = "last"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
CRF_KEYS = ("transitions", "start", "end")


class CheckpointError(ValueError):
    """A path that is not a checkpoint of this format, or one that is incomplete."""


def is_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / RUN_FILE).is_file() and (p / CRF_FILE).is_file() and (p / CONFIG_FILE).is_file()


def resolve(path: str | os.PathLike) -> Path:
    """Return the checkpoint directory for ``path``: a checkpoint itself or a run directory.

    A run directory resolves to its ``best/`` checkpoint. If a crash happened between the two
    renames of :func:`atomic_dir`, the previous version (``best.old``) is restored first.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such directory")
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a directory")
    if is_checkpoint(p):
        return p
    best = recover(p / BEST)
    if is_checkpoint(best):
        return best
    missing = [f for f in (CONFIG_FILE, CRF_FILE, RUN_FILE) if not (p / f).is_file()]
    raise CheckpointError(
        f"{p}: not a checkpoint of this toolkit (missing {', '.join(missing)}) and no {BEST}/ "
        f"checkpoint inside it. Train one with `python -m training.teacher` or "
        f"`python -m training.distill`."
    )


def recover(target: str | os.PathLike) -> Path:
    """Undo a crash between the two renames of :func:`atomic_dir`: ``X.old`` back to ``X``."""
    target = Path(target)
    old = target.with_name(target.name + ".old")
    if not target.exists() and old.is_dir():
        old.rename(target)
    return target


def read_run(path: str | os.PathLike) -> dict:
    """Read ``run.json`` from a checkpoint (or run) directory and check its format tag."""
    ckpt = resolve(path)
    info = json.loads((ckpt / RUN_FILE).read_text())
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt / RUN_FILE}: format is {info.get('format')!r}, expected {FORMAT!r}")
    if int(info.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt / RUN_FILE}: format version {info['version']} is newer than this toolkit "
            f"({FORMAT_VERSION}); upgrade it"
        )
    return info


def read_crf_numpy(path: str | os.PathLike) -> dict:
    """CRF parameters as NumPy arrays (no torch): ``{"transitions", "start", "end"}``."""
    from safetensors.numpy import load_file

    ckpt = resolve(path)
    f = ckpt / CRF_FILE
    tensors = load_file(str(f))
    missing = [k for k in CRF_KEYS if k not in tensors]
    if missing:
        raise CheckpointError(f"{f}: missing CRF tensors {missing}")
    return {k: tensors[k] for k in CRF_KEYS}


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (temp file in the same directory + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def append_jsonl(path: str | os.PathLike, obj) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, default=_json_default) + "\n")


def update_metrics(run_dir: str | os.PathLike, split: str, metrics: dict) -> Path:
    """Merge ``metrics`` under ``split`` into ``run_dir/metrics.json``."""
    path = Path(run_dir) / METRICS_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    data[split] = metrics
    write_json(path, data)
    return path


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike):
    """Yield a temporary directory; on success it replaces ``target`` as a whole.

    The old version is renamed to ``<target>.old`` before the new one is moved in, and removed
    after; :func:`recover` restores ``.old`` if a crash happened between the two renames.
    On error the temporary directory is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        old = target.with_name(target.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def dir_size_bytes(path: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
