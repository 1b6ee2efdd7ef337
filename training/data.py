"""Sub-word encoding and batching of sentences for a BERT-CRF (torch).

* :func:`encode` turns sentences (:class:`training.corpora.Sentence`) into sub-word ids for a
  Hugging Face *fast* tokenizer, remembering where the first sub-token of every word is, so that a
  CRF can run over words rather than sub-tokens.
* :func:`collate` / :func:`batches` pad encoded sentences into tensors.

Reading corpora (CoNLL files, the named datasets) is :mod:`training.corpora`, which needs no torch.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from export.pipeline import align, kept_words
from training.corpora import DataError, Sentence

__all__ = ["Encoded", "encode", "truncation_report", "collate", "batches"]

# ---------------------------------------------------------------------------
# Sub-word encoding
# ---------------------------------------------------------------------------

@dataclass
class Encoded:
    """Encoded sentences plus truncation statistics.

    Each item is a dict with ``input_ids``, ``attention_mask``, optionally
    ``token_type_ids`` (lists of sub-token length), ``word_index`` (position of
    the first sub-token of every kept word), ``labels`` (label ids of the kept
    words; absent if no ``label2id`` was given), ``n_words`` (word count before
    truncation) and ``index`` (position of the sentence in the input list).
    """
    items: list[dict]
    max_length: int
    pad_token_id: int = 0            # the tokenizer's pad id, for collate/batches
    n_words: int = 0                 # total words before truncation
    n_truncated_words: int = 0       # words dropped because of max_length
    n_truncated_sentences: int = 0   # sentences that lost at least one word
    n_replaced_words: int = 0        # words without sub-tokens, encoded as unk

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def __iter__(self):
        return iter(self.items)


def _empty_words(tokenizer, words: set[str]) -> set[str]:
    """Words that the tokenizer turns into zero sub-tokens (e.g. a lone U+200B)."""
    words = sorted(words)
    if not words:
        return set()
    ids = tokenizer([[w] for w in words], is_split_into_words=True,
                    add_special_tokens=False)["input_ids"]
    return {w for w, i in zip(words, ids) if not i}


def encode(sentences: Sequence[Sentence], tokenizer, label2id: dict[str, int] | None,
           max_length: int = 128, chunk_size: int = 1024) -> Encoded:
    """Tokenize sentences (already split into words) with a fast tokenizer.

    Words that yield no sub-token are replaced by the tokenizer's unk token, so
    every word keeps a position. Words that do not fit in ``max_length``
    sub-tokens (special tokens included) are dropped from the end of the
    sentence and counted in ``n_truncated_words`` / ``n_truncated_sentences``.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("encode() needs a fast (Rust) tokenizer for word_ids()")
    if getattr(tokenizer, "truncation_side", "right") != "right":
        raise ValueError("encode() needs tokenizer.truncation_side == 'right'")
    min_len = tokenizer.num_special_tokens_to_add(pair=False) + 1
    if max_length < min_len:
        raise ValueError(f"max_length={max_length} leaves no room for a word (needs >= {min_len})")
    unk = tokenizer.unk_token or "?"
    empty = _empty_words(tokenizer, {w for s in sentences for w in s.words})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = Encoded(items=[], max_length=max_length, pad_token_id=pad_id)
    for start in range(0, len(sentences), chunk_size):
        chunk = sentences[start:start + chunk_size]
        if any(not s.words for s in chunk):
            i = start + next(j for j, s in enumerate(chunk) if not s.words)
            raise DataError(f"sentence {i} has no words")
        words = [[unk if w in empty else w for w in s.words] for s in chunk]
        batch = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        for j, s in enumerate(chunk):
            index = start + j
            first, _ = align(batch.word_ids(j), len(s.words))
            try:
                kept = kept_words(first)
            except RuntimeError as e:
                raise RuntimeError(f"sentence {index}: {e}") from None
            word_index = first[:kept]
            item = {"input_ids": batch["input_ids"][j], "attention_mask": batch["attention_mask"][j]}
            if "token_type_ids" in batch:
                item["token_type_ids"] = batch["token_type_ids"][j]
            item.update(word_index=word_index, n_words=len(s.words), index=index)
            if label2id is not None:
                labels = []
                for t in s.tags[:kept]:
                    if t not in label2id:
                        raise DataError(f"sentence {index}: tag {t!r} is not in the label set {list(label2id)}")
                    labels.append(label2id[t])
                item["labels"] = labels
            enc.items.append(item)
            enc.n_words += len(s.words)
            enc.n_replaced_words += sum(w in empty for w in s.words)
            if kept < len(s.words):
                enc.n_truncated_words += len(s.words) - kept
                enc.n_truncated_sentences += 1
    return enc


def truncation_report(enc: Encoded) -> str:
    """One log line about truncation (and words replaced by unk)."""
    pct = 100.0 * enc.n_truncated_words / max(enc.n_words, 1)
    msg = (f"max_length={enc.max_length}: {enc.n_truncated_sentences} of {len(enc)} sentences "
           f"truncated, {enc.n_truncated_words} of {enc.n_words} words dropped ({pct:.2f}%)")
    if enc.n_replaced_words:
        msg += f"; {enc.n_replaced_words} words without sub-tokens encoded as unk"
    return msg


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------

def collate(items: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad encoded items into a batch.

    Returns ``input_ids``, ``attention_mask`` (and ``token_type_ids``) of shape
    (B, S); ``word_index`` (long, 0 at pads), ``word_mask`` (bool) and
    ``labels`` (long, 0 at pads; only if the items have labels) of shape (B, N);
    ``index`` (B,) when the items carry sentence indices.
    """
    B = len(items)
    S = max(len(it["input_ids"]) for it in items)
    N = max(len(it["word_index"]) for it in items)
    out = {
        "input_ids": torch.full((B, S), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((B, S), dtype=torch.long),
        "word_index": torch.zeros((B, N), dtype=torch.long),
        "word_mask": torch.zeros((B, N), dtype=torch.bool),
    }
    has_tt = "token_type_ids" in items[0]
    has_labels = "labels" in items[0]
    if has_tt:
        out["token_type_ids"] = torch.zeros((B, S), dtype=torch.long)
    if has_labels:
        out["labels"] = torch.zeros((B, N), dtype=torch.long)
    for b, it in enumerate(items):
        s, n = len(it["input_ids"]), len(it["word_index"])
        out["input_ids"][b, :s] = torch.tensor(it["input_ids"], dtype=torch.long)
        out["attention_mask"][b, :s] = torch.tensor(it["attention_mask"], dtype=torch.long)
        if has_tt:
            out["token_type_ids"][b, :s] = torch.tensor(it["token_type_ids"], dtype=torch.long)
        out["word_index"][b, :n] = torch.tensor(it["word_index"], dtype=torch.long)
        out["word_mask"][b, :n] = True
        if has_labels:
            out["labels"][b, :n] = torch.tensor(it["labels"], dtype=torch.long)
    if all("index" in it for it in items):
        out["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
    return out


def batches(encoded: Encoded | Sequence[dict], batch_size: int, shuffle: bool = False,
            seed: int = 0, pad_token_id: int | None = None,
            bucket: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Yield collated batches; each has ``index`` (B,) = positions in ``encoded``.

    With ``shuffle`` the order is a ``random.Random(seed)`` permutation (same
    seed, same order). With ``bucket``, sentences of similar sub-token length
    are batched together (to save padding): the order is cut into pools of 50
    batches, each pool is sorted by length, and the batches are then shuffled
    (if ``shuffle``). Still deterministic for a given seed. ``pad_token_id``
    defaults to ``encoded.pad_token_id``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    items = encoded.items if isinstance(encoded, Encoded) else list(encoded)
    if pad_token_id is None:
        pad_token_id = getattr(encoded, "pad_token_id", 0)
    rng = random.Random(seed)
    order = list(range(len(items)))
    if shuffle:
        rng.shuffle(order)
    groups = []
    if bucket:
        pool = batch_size * 50
        for p in range(0, len(order), pool):
            chunk = sorted(order[p:p + pool], key=lambda i: len(items[i]["input_ids"]))
            groups += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
        if shuffle:
            rng.shuffle(groups)
    else:
        groups = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    for group in groups:
        batch = collate([items[i] for i in group], pad_token_id)
        batch["index"] = torch.tensor(group, dtype=torch.long)
        yield batch
