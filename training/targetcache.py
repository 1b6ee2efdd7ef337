"""The frozen teacher's KD targets per sentence, kept in memory and on disk (``--teacher-cache DIR``),
so that epochs after the first (and later runs with the same teacher) do not run the teacher again.

One safetensors file per (teacher checkpoint digest, KD method, k, temperature) in DIR; inside it,
per sentence, the targets of :func:`training.losses.teacher_targets` cut to the sentence's length:
``node`` (n, L) and ``edge`` (n-1, L, L) marginals, or ``paths`` (k, n) and ``valid`` (k,) for topk.
A sentence is keyed by a hash of its teacher sub-token ids and first-sub-token positions, which fixes
the words, the tokenizer and the effect of ``--max-length``. Padding a sentence's targets back into a
batch gives exactly what ``teacher_targets`` returns on that batch (zeros at padded positions). The
file is rewritten (atomically) at the end of every epoch that added sentences. Not for MSD: its
teacher changes at every step.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from training import checkpoint as ckpt


def teacher_digest(teacher_path) -> str:
    """sha256 of the teacher checkpoint's weight files (encoder + CRF)."""
    h = hashlib.sha256()
    d = ckpt.resolve(teacher_path)
    for name in ("model.safetensors", ckpt.CRF_FILE):
        with open(d / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class TargetCache:
    def __init__(self, directory, digest: str, method: str, k: int, temperature: float):
        self.path = Path(directory) / f"{digest[:20]}-{method}-k{k if method == 'topk' else 0}-T{temperature:g}.safetensors"
        self.entries: dict[str, dict[str, torch.Tensor]] = {}
        if self.path.is_file():
            for name, t in load_file(str(self.path)).items():
                key, part = name.split(".")
                self.entries.setdefault(key, {})[part] = t
        self.added = 0

    @staticmethod
    def keys(batch: dict) -> list[str]:
        """One key per row of a (teacher) batch: its sub-token ids and word starts."""
        out = []
        for ids, am, wi, wm in zip(batch["input_ids"], batch["attention_mask"], batch["word_index"], batch["word_mask"]):
            h = hashlib.sha1(ids[am.bool()].cpu().numpy().tobytes())
            h.update(wi[wm].cpu().numpy().tobytes())
            out.append(h.hexdigest())
        return out

    def targets(self, batch: dict, compute) -> dict:
        """The targets of ``batch`` from the cache when every row is there, else ``compute(batch)``
        (whose rows are then stored)."""
        keys, lengths = self.keys(batch), batch["word_mask"].sum(1).tolist()
        if all(k in self.entries for k in keys):
            out = self._assemble([self.entries[k] for k in keys], batch["word_mask"].shape[1])
            return {name: t.to(batch["word_mask"].device) for name, t in out.items()}
        targets = compute(batch)
        for b, (k, n) in enumerate(zip(keys, lengths)):
            if k not in self.entries:
                self.entries[k] = {name: self._cut(name, t[b], n).detach().cpu().contiguous()
                                   for name, t in targets.items()}
                self.added += 1
        return targets

    @staticmethod
    def _cut(name, t, n):
        return {"node": lambda: t[:n], "edge": lambda: t[:n - 1], "paths": lambda: t[:, :n], "valid": lambda: t}[name]()

    @staticmethod
    def _assemble(rows: list[dict], N: int) -> dict:
        out = {}
        for name in rows[0]:
            parts = [r[name] for r in rows]
            if name == "valid":
                out[name] = torch.stack(parts)
                continue
            dim = 1 if name == "paths" else 0
            size = N - 1 if name == "edge" else N
            padded = []
            for p in parts:
                shape = list(p.shape)
                shape[dim] = size - p.shape[dim]
                padded.append(torch.cat([p, p.new_zeros(shape)], dim))
            out[name] = torch.stack(padded)
        return out

    def saving(self, batches):
        """``batches``, then :meth:`save` once they are exhausted (the epoch's end, before its checkpoint)."""
        yield from batches
        self.save()

    def save(self) -> None:
        """Write the file if this run added sentences (atomic: temporary file, then rename)."""
        if not self.added:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        save_file({f"{k}.{name}": t for k, e in self.entries.items() for name, t in e.items()}, str(tmp))
        os.replace(tmp, self.path)
        self.added = 0
