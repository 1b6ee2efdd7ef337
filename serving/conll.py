"""CoNLL files streamed block by block, for :mod:`serving.tag` (torch-free, like the rest of ``serving/``).

The training side parses labelled CoNLL files with :func:`training.corpora.read_conll`; this is the
serving side's splitter: it only cuts the lines into sentences, keeps whatever items it is given
(``serving.tag`` passes line numbers and byte offsets along, to resume a file) and holds one
sentence in memory at a time.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator


def conll_blocks(lines: Iterable, text: Callable = str) -> Iterator[tuple[str, list]]:
    """Stream the blocks of a CoNLL file: ``("sentence", items)`` for a run of non-blank lines
    (words in the first column) and ``("docstart", [item])`` for a ``-DOCSTART-`` line; blank lines
    only separate blocks and are dropped. ``lines`` may hold any items, ``text(item)`` giving the
    line (:mod:`serving.tag` passes ``(line number, text, byte offset)`` tuples). A generator:
    memory is one sentence, whatever the file's size."""
    block: list = []
    for item in lines:
        fields = text(item).split()
        if fields and fields[0] != "-DOCSTART-":
            block.append(item)
            continue
        if block:
            yield "sentence", block
            block = []
        if fields:
            yield "docstart", [item]
    if block:
        yield "sentence", block
