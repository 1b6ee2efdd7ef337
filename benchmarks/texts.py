"""Sentences for the serving benchmark and the load test (read in place, never copied into the repo).

Order of preference: a CoNLL file given with ``--data``; the CoNLL-2003 test split at
``../shared/data/conll2003/test.txt`` (relative to the repository); the test split of the
``default`` dataset (needs the training extras: :func:`training.corpora.load_dataset`, run in a
subprocess); a few built-in sentences. Sentences are picked evenly spaced over the file
(deterministic), and a raw text is the sentence's words joined with single spaces.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONLL_TEST = ROOT.parent / "shared" / "data" / "conll2003" / "test.txt"

BUILTIN = [
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn",
    "BRUSSELS 1996-08-22",
    "The European Commission said on Thursday it disagreed with German advice to consumers to shun British lamb "
    "until scientists determine whether mad cow disease can be transmitted to sheep .",
    "Germany 's representative to the European Union 's veterinary committee Werner Zwingmann said on Wednesday "
    "consumers should buy sheepmeat from countries other than Britain until the scientific advice was clearer .",
    "Angela Merkel visited Washington on Tuesday to meet Barack Obama at the White House .",
    "Japan began the defence of their Asian Cup title with a lucky 2-1 win against Syria in a Group C "
    "championship match on Friday .",
    "Nadim Ladki",
    "AL-AIN , United Arab Emirates 1996-12-06",
    "Rugby Union - Cuttitta back for Italy after a year .",
]


def read_conll_words(path: str | Path) -> list[list[str]]:
    """First column of a CoNLL file, one list of words per sentence (``-DOCSTART-`` skipped), read by
    the project's CoNLL reader (:func:`training.corpora.read_conll`, words only)."""
    from training.corpora import read_conll

    return [s.words for s in read_conll(path, tag_col=None)]


def spread(items: list, n: int) -> list:
    """``n`` items evenly spaced over ``items`` (all of them when there are no more than ``n``)."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def load_sentences(n: int, data: str | Path | None = None, allow_training_import: bool = True):
    """``(sentences as word lists, description of the source)``."""
    if data is not None:
        sents = read_conll_words(data)
        return spread(sents, n), f"{data} ({len(sents)} sentences, {min(n, len(sents))} used)"
    if CONLL_TEST.is_file():
        sents = read_conll_words(CONLL_TEST)
        return spread(sents, n), (f"CoNLL-2003 test ({CONLL_TEST}, {len(sents)} sentences, "
                                  f"{min(n, len(sents))} evenly spaced)")
    if allow_training_import:  # in a subprocess: slow, and it fails without the training extras
        code = ("import json; from training.corpora import load_dataset; "
                "print(json.dumps([s.words for s in load_dataset('default').test]))")
        try:
            p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
            if p.returncode == 0:
                sents = json.loads(p.stdout.strip().splitlines()[-1])
                return spread(sents, n), (f"default dataset test split ({len(sents)} sentences, "
                                          f"{min(n, len(sents))} used)")
        except (subprocess.TimeoutExpired, ValueError, IndexError):  # no training extras / data
            pass
    sents = [s.split() for s in BUILTIN]
    return [sents[i % len(sents)] for i in range(n)], f"built-in sentences ({len(sents)} distinct, repeated)"
