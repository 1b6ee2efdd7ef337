"""PyTorch emissions for the tagging pipeline: a BertCrf runs through the engine's code.

:class:`TorchEmissions` is the PyTorch source of emissions of :class:`export.pipeline.Tagger`, so
a checkpoint is tagged exactly as its ONNX export is served -- same word splitting, alignment,
windows, NumPy CRF, confidences and spans; only the encoder differs. :func:`tagger` builds that
tagger for a loaded model; the demo's PyTorch teacher, the serving benchmark's PyTorch student,
the exporter's parity reference and the export evaluation use it. Training evaluation
(:func:`training.evaluate.predict`) keeps its own batches (truncation, NLL, several processes)
and decodes them with the pipeline's NumPy Viterbi through :func:`decode`.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from export import pipeline
from export.pipeline import DEFAULT_WINDOW_OVERLAP, INPUT_NAMES, Tagger

__all__ = ["TorchEmissions", "tagger", "crf_arrays", "max_length", "decode"]


class TorchEmissions:
    """Logits of a :class:`training.model.BertCrf`'s encoder for :class:`export.pipeline.Tagger`
    (no gradient, eval mode, on ``device``; returned as float32 NumPy)."""

    batch_invariant = True  # padded keys are masked out: windows are batched

    def __init__(self, model, device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.device = torch.device(device)
        accepted = inspect.signature(model.encoder.forward).parameters
        self.input_names = [n for n in INPUT_NAMES if n in accepted]

    def logits(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = self.model.encoder(**{k: torch.from_numpy(feed[k]).to(self.device) for k in self.input_names})
        return out.logits.float().cpu().numpy()


def crf_arrays(model) -> dict:
    """The model's CRF as the pipeline takes it: ``labels`` and float32 NumPy ``transitions``,
    ``start``, ``end`` (the layout of :func:`export.format.read_crf`)."""
    return {"labels": list(model.labels),
            **{k: getattr(model.crf, k).detach().float().cpu().numpy() for k in ("transitions", "start", "end")}}


def max_length(model, tokenizer, run_info: dict) -> int:
    """Sub-tokens per sequence for a checkpoint: its training ``max_length`` (default 128), within
    the encoder's position embeddings and the tokenizer's limit."""
    value = int((run_info.get("args") or {}).get("max_length") or 128)
    limits = [getattr(model.encoder.config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    return min([value] + [int(x) for x in limits if x and x < 1_000_000])


def tagger(model, tokenizer, max_length: int, device: str | torch.device = "cpu",
           window_overlap: float = DEFAULT_WINDOW_OVERLAP) -> Tagger:
    """The tagging pipeline with ``model`` (a BertCrf) as the source of emissions and its CRF;
    ``tokenizer``: its fast tokenizer (transformers) or a ``tokenizers.Tokenizer``."""
    return Tagger(TorchEmissions(model, device), tokenizer, crf_arrays(model), max_length, window_overlap)


def decode(potentials) -> list[list[int]]:
    """Viterbi tag ids per sentence of a batch's :class:`training.model.Potentials` (kept words
    only), by the pipeline's NumPy decoder (:func:`export.pipeline.decode`)."""
    def numpy(t):
        return t.detach().float().cpu().numpy()

    crf = {"transitions": numpy(potentials.transitions), "start": numpy(potentials.start),
           "end": numpy(potentials.end)}
    return pipeline.decode(numpy(potentials.emissions), potentials.mask.cpu().numpy(), crf)
