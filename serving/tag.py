"""Tag a corpus with an ONNX export, streaming, in one or several processes, resumable.

    python -m serving.tag INPUT --export runs/student/onnx --out OUT
        [--format txt|jsonl|conll] [--out-format jsonl|conll] [--workers 1] [--threads N]
        [--batch-size 256] [--onnx-batch 32] [--precision fp32] [--device cpu|cuda]
        [--on-error skip|stop] [--resume | --overwrite]

Input (``--format``, else from INPUT's extension: ``.txt`` txt, ``.jsonl``/``.ndjson`` jsonl,
``.conll``/``.iob`` conll; UTF-8, a BOM is ignored, lines end with ``\\n`` or ``\\r\\n``):

- ``txt``: one document per line, every line (an empty line is an empty document).
- ``jsonl``: one JSON object per line with a string ``text``; every other field is passed through
  to the output. Blank lines are ignored. A malformed line (not JSON, not an object, no string
  ``text``, ``NaN``, a lone surrogate) is a *bad record* (``--on-error``).
- ``conll``: words in the first column, sentences separated by blank lines. ``-DOCSTART-`` lines
  are copied to CoNLL output (followed by a blank line, as in CoNLL-2003) and left out of JSONL
  output (they are not sentences).

Output (``--out-format``, else from OUT's extension, else ``conll`` for CoNLL input and ``jsonl``
otherwise):

- ``jsonl``: one object per document: the input object (jsonl), ``{"text"}`` (txt) or
  ``{"words", "text"}`` (conll; ``text`` is the words joined by single spaces), plus
  ``"entities"``: :class:`serving.engine.Entity` dicts (text, label, start, end, score,
  word_start, word_end), exactly what :meth:`NerEngine.predict` / ``predict_words`` return. An
  input field named ``entities`` is replaced.
- ``conll``: CoNLL input lines with the predicted tag appended as a last column (tab-separated
  when the line has tabs, else one space); for txt / jsonl input the words of
  :func:`serving.engine.split_words`, ``word<TAB>tag``. A blank line ends every sentence;
  documents without words give no sentence.

Streaming: records are read by a generator and sent in chunks of ``--batch-size`` records; at
most ``2 * workers`` chunks are in flight, so memory does not depend on the input's size. With
``--workers N > 1`` each of N processes (spawned, torch-free) loads its own engine with
``--threads`` ONNX Runtime threads (default: cores / N), and chunks are written in input order.

Durability and ``--resume``: after each chunk the output (and the errors file) is flushed and
fsynced, then ``OUT.progress.json`` is replaced atomically with the number of input records done,
the input byte offset and line reached, and the output's byte size. A killed run therefore never
has a progress file that claims an unwritten line; ``--resume`` truncates OUT to the recorded size
and continues from the recorded input offset, so the result is byte-identical to an uninterrupted
run. The progress file stays after a finished run (``"done": true``, the counts).

Bad records (``--on-error``): ``skip`` (default) writes ``{"line", "error", "input"}`` to
``OUT.errors.jsonl``, prints the first ones on stderr and counts them in the final summary;
``stop`` finishes the records before it, prints ``error: INPUT:LINE: ...`` and exits 2 (fix the
line and ``--resume``). Exit 2, with one ``error: ...`` line, before anything is written: bad
options (``--workers 0``, ...), an unreadable or non-UTF-8 input (path and line; found later in the
file it stops the run there, resumable), an output that exists without ``--resume`` or
``--overwrite``, a bad export directory.

Imports NumPy, onnxruntime, tokenizers, tqdm and the serving modules only -- never torch.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from serving.conll import conll_blocks

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FORMATS = ("txt", "jsonl", "conll")
OUT_FORMATS = ("jsonl", "conll")
EXTENSIONS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".conll": "conll", ".iob": "conll"}
OUT_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".conll": "conll", ".iob": "conll"}
PROGRESS_VERSION = 1
TAIL_BYTES = 4096        # input bytes before the resume offset whose hash detects a changed input
MAX_WARNINGS = 10        # skipped records printed on stderr (all of them go to OUT.errors.jsonl)
# a resumed run must agree on these (they change the output); workers, threads, batch sizes may differ
RESUME_KEYS = ("input", "format", "out_format", "export", "precision")


class UsageError(ValueError):
    """Bad options or inputs found before any work: ``error: ...``, exit 2."""


class InputError(ValueError):
    """The input cannot be read further (not UTF-8, unreadable): ``error: ...``, exit 2."""


class BadRecord(ValueError):
    """A malformed record under ``--on-error stop``."""


def progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress.json")


def errors_path(out: Path) -> Path:
    return out.with_name(out.name + ".errors.jsonl")


# --------------------------------------------------------------------------- options
@dataclass
class TagArgs:
    input: Path
    out: Path
    export: Path = Path("runs/student/onnx")
    format: str | None = None        # None: from the input's extension
    out_format: str | None = None    # None: from OUT's extension, else conll for conll input, else jsonl
    workers: int = 1
    threads: int | None = None       # per worker; None: ONNX Runtime's default (1 worker) or cores / workers
    batch_size: int = 256            # records per chunk (read, tagged, written and checkpointed together)
    onnx_batch: int = 32             # documents per ONNX Runtime call (NerEngine's batch_size)
    precision: str = "fp32"          # passed as is to NerEngine.from_dir
    device: str = "cpu"
    on_error: str = "skip"
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self):
        self.input, self.out, self.export = Path(self.input), Path(self.out), Path(self.export)
        if self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.batch_size < 1 or self.onnx_batch < 1:
            raise UsageError(f"--batch-size and --onnx-batch must be >= 1, got {self.batch_size}, {self.onnx_batch}")
        if self.on_error not in ("skip", "stop"):
            raise UsageError(f"--on-error must be skip or stop, got {self.on_error!r}")
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite exclude each other")
        if not self.input.exists():
            raise UsageError(f"{self.input}: no such input file")
        if not self.input.is_file():
            raise UsageError(f"{self.input}: not a file")
        try:
            with open(self.input, "rb") as f:
                f.read(1)
        except OSError as e:
            raise UsageError(f"{self.input}: cannot read: {e.strerror}") from None
        if self.format is None:
            self.format = EXTENSIONS.get(self.input.suffix.lower())
            if self.format is None:
                raise UsageError(f"{self.input}: cannot tell the format from the extension "
                                 f"{self.input.suffix or '(none)'!r}; pass --format txt|jsonl|conll")
        if self.format not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.out_format is None:
            self.out_format = OUT_EXTENSIONS.get(self.out.suffix.lower(),
                                                 "conll" if self.format == "conll" else "jsonl")
        if self.out_format not in OUT_FORMATS:
            raise UsageError(f"--out-format must be jsonl or conll, got {self.out_format!r}")
        if self.out.exists() and self.out.resolve() == self.input.resolve():
            raise UsageError(f"{self.out}: the output would overwrite the input")
        if self.out.is_dir():
            raise UsageError(f"{self.out}: is a directory")
        if self.threads is None and self.workers > 1:
            self.threads = max(1, (os.cpu_count() or 1) // self.workers)

    def settings(self) -> dict:
        """What the output depends on (checked by ``--resume``)."""
        return {"input": str(self.input.resolve()), "format": self.format, "out_format": self.out_format,
                "export": str(self.export.resolve()), "precision": self.precision}


# --------------------------------------------------------------------------- reading
@dataclass
class Record:
    """One input record: a document, a CoNLL sentence, a ``-DOCSTART-`` line or a bad record.
    ``line``/``end_line``: its first and last line numbers (1-based); ``end``: byte offset after
    its last line (where a resumed run seeks to)."""

    line: int
    end_line: int
    end: int
    text: str | None = None            # txt / jsonl document
    words: list | None = None          # conll sentence: first column
    lines: list | None = None          # conll: the original lines (CoNLL output appends a column)
    fields: dict | None = None         # jsonl: the whole object, passed through
    error: str | None = None           # bad record: why
    raw: str | None = None             # bad record: the line as read
    docstart: bool = False


def _lines(f, path, offset: int, line_no: int) -> Iterator[tuple[int, str, int]]:
    """``(line number, line without its end of line, byte offset after it)`` from a binary file."""
    pos = offset
    for raw in f:
        line_no += 1
        pos += len(raw)
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{path}:{line_no}: not UTF-8 (byte {e.object[e.start:e.start + 1]!r} at column "
                             f"{e.start + 1}); convert the file, e.g. iconv -f latin1 -t utf-8") from None
        if pos == len(raw) and s.startswith("\ufeff"):  # BOM at the very start
            s = s[1:]
        if s.endswith("\n"):
            s = s[:-2] if s.endswith("\r\n") else s[:-1]
        yield line_no, s, pos


def _json_type(x) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(x), type(x).__name__)


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def parse_jsonl(s: str) -> tuple[dict | None, str | None]:
    """``(object, None)`` for a good JSONL line, ``(None, why)`` for a bad one."""
    try:
        obj = json.loads(s, parse_constant=_reject_constant)
    except RecursionError:
        return None, "not JSON (nested too deep)"
    except ValueError as e:
        return None, f"not JSON ({e})"
    if not isinstance(obj, dict):
        return None, f"not a JSON object ({_json_type(obj)})"
    if "text" not in obj:
        return None, 'no "text" field'
    if not isinstance(obj["text"], str):
        return None, f'"text" is not a string ({_json_type(obj["text"])})'
    if "\\u" in s:  # an escaped lone surrogate cannot be written as UTF-8
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, "a lone surrogate (\\ud800-\\udfff) in a string"
    return obj, None


def read_records(path, fmt: str, offset: int = 0, line: int = 0) -> Iterator[Record]:
    """Records of ``path`` from byte ``offset`` (line number ``line`` before it). A generator over
    a buffered binary file: memory is one record, whatever the file's size. Raises
    :class:`InputError` at a line that is not UTF-8."""
    with open(path, "rb") as f:
        f.seek(offset)
        lines = _lines(f, path, offset, line)
        if fmt == "txt":
            for n, s, end in lines:
                yield Record(n, n, end, text=s)
        elif fmt == "jsonl":
            for n, s, end in lines:
                if not s.strip():
                    continue
                obj, why = parse_jsonl(s)
                if why:
                    yield Record(n, n, end, error=why, raw=s)
                else:
                    yield Record(n, n, end, text=obj["text"], fields=obj)
        elif fmt == "conll":
            for kind, block in conll_blocks(lines, text=lambda item: item[1]):
                first, last = block[0], block[-1]
                texts = [item[1] for item in block]
                if kind == "docstart":
                    yield Record(first[0], last[0], last[2], lines=texts, docstart=True)
                else:
                    yield Record(first[0], last[0], last[2], words=[t.split()[0] for t in texts], lines=texts)
        else:
            raise ValueError(f"unknown format {fmt!r}")


def chunked(records: Iterable[Record], size: int, on_error: str) -> Iterator[list[Record]]:
    """Lists of ``size`` records. Under ``on_error="stop"`` the records before a bad one are
    yielded, then :class:`BadRecord` is raised."""
    chunk: list[Record] = []
    for r in records:
        if r.error is not None and on_error == "stop":
            if chunk:
                yield chunk
            raise BadRecord(r)
        chunk.append(r)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def ordered(chunks: Iterator, submit: Callable, max_pending: int) -> Iterator[tuple[object, object]]:
    """``(chunk, result)`` in input order, with at most ``max_pending`` chunks submitted and not
    yet yielded (the read-ahead bound). ``submit(chunk)`` returns an object with ``.result()``.
    An exception of ``chunks`` is raised after every chunk read before it has been yielded."""
    pending: collections.deque = collections.deque()
    failure = None
    while True:
        while failure is None and len(pending) < max_pending:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except (InputError, BadRecord) as e:
                failure = e
                break
            pending.append((chunk, submit(chunk)))
        if not pending:
            break
        chunk, fut = pending.popleft()
        yield chunk, fut.result()
    if failure is not None:
        raise failure


# --------------------------------------------------------------------------- tagging (any process)
_ENGINE = None


def init_engine(export, precision, device, threads):
    """Load this process's engine (a worker's initializer; also the single-process path)."""
    global _ENGINE
    from serving.engine import NerEngine

    _ENGINE = NerEngine.from_dir(export, device=device, threads=threads, precision=precision)
    return _ENGINE


def _json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def _conll_sentence(lines, tags) -> str:
    """CoNLL lines with a tag column appended (tab-separated if the line has tabs), blank line after."""
    return "".join(f"{line}{chr(9) if chr(9) in line else ' '}{tag}\n" for line, tag in zip(lines, tags)) + "\n"


def tag_chunk(records: list[Record], out_format: str, onnx_batch: int) -> tuple[str, int, int]:
    """Output text of a chunk, documents tagged, entities found (runs in a worker)."""
    from serving.engine import split_words, tags_to_spans

    engine = _ENGINE
    docs = [r for r in records if r.error is None and not r.docstart]
    n_ents = 0
    parts: dict[int, str] = {}
    if out_format == "jsonl":
        if docs and docs[0].words is not None:
            ents = engine.predict_words([r.words for r in docs], batch_size=onnx_batch)
        else:
            ents = engine.predict([r.text for r in docs], batch_size=onnx_batch)
        for r, es in zip(docs, ents):
            n_ents += len(es)
            if r.fields is not None:
                obj = dict(r.fields)
            elif r.words is not None:
                obj = {"words": r.words, "text": " ".join(r.words)}
            else:
                obj = {"text": r.text}
            obj["entities"] = [e.to_dict() for e in es]
            parts[id(r)] = _json(obj)
    else:
        words = [r.words if r.words is not None else split_words(r.text)[0] for r in docs]
        for r, ws, ts in zip(docs, words, engine.tag_words(words, batch_size=onnx_batch)):
            n_ents += len(tags_to_spans(ts))
            if not ws:      # a document without words: no sentence
                parts[id(r)] = ""
            elif r.lines is not None:
                parts[id(r)] = _conll_sentence(r.lines, ts)
            else:
                parts[id(r)] = "".join(f"{w}\t{t}\n" for w, t in zip(ws, ts)) + "\n"
    text = []
    for r in records:
        if r.docstart:
            if out_format == "conll":
                text.append("\n".join(r.lines) + "\n\n")
        elif r.error is None:
            text.append(parts[id(r)])
    return "".join(text), len(docs), n_ents


class _Done:
    """A result computed at once (the single-process path of :func:`ordered`)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


# --------------------------------------------------------------------------- durable output
def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_progress(path: Path, state: dict) -> None:
    """Replace the progress file atomically (temporary file, fsync, rename, fsync the directory)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(state, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_progress(path: Path) -> dict:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path}: unreadable progress file ({e}); start again with --overwrite") from None
    need = ("version", "records", "in_bytes", "in_lines", "out_bytes", "errors_bytes", "done") + RESUME_KEYS
    if not isinstance(state, dict) or any(k not in state for k in need) or state["version"] != PROGRESS_VERSION:
        raise UsageError(f"{path}: not a progress file of this version; start again with --overwrite")
    return state


def tail_hash(path: Path, offset: int) -> str:
    """sha256 of the ``TAIL_BYTES`` input bytes before ``offset`` (the last records done)."""
    with open(path, "rb") as f:
        f.seek(max(0, offset - TAIL_BYTES))
        return hashlib.sha256(f.read(min(offset, TAIL_BYTES))).hexdigest()


def prepare_output(a: TagArgs) -> dict:
    """The starting state: fresh, or the recorded progress of an interrupted run (output and
    errors file truncated to what the progress file claims). Raises :class:`UsageError`."""
    prog, errs = progress_path(a.out), errors_path(a.out)
    fresh = {"version": PROGRESS_VERSION, **a.settings(), "records": 0, "documents": 0, "entities": 0,
             "skipped": 0, "in_bytes": 0, "in_lines": 0, "in_tail_sha256": tail_hash(a.input, 0),
             "out_bytes": 0, "errors_bytes": 0, "done": False}
    existing = [p for p in (a.out, prog, errs) if p.exists()]
    if a.overwrite or not existing:
        return fresh
    if not a.resume:
        raise UsageError(f"{existing[0]} exists: pass --resume to continue an interrupted run or --overwrite "
                         "to start again")
    if not prog.exists():
        raise UsageError(f"{a.out} exists but {prog.name} does not: cannot tell what was done; use --overwrite")
    state = read_progress(prog)
    diff = [f"{k} {state.get(k)!r} -> {v!r}" for k, v in a.settings().items() if state.get(k) != v]
    if diff:
        raise UsageError(f"{prog}: the interrupted run used other settings ({'; '.join(diff)}); "
                         "use the same ones, or --overwrite")
    size = a.input.stat().st_size
    if size < state["in_bytes"] or tail_hash(a.input, state["in_bytes"]) != state["in_tail_sha256"]:
        raise UsageError(f"{a.input} changed since the interrupted run (its first {state['in_bytes']} bytes "
                         "differ); use --overwrite")
    for path, key in ((a.out, "out_bytes"), (errs, "errors_bytes")):
        have = path.stat().st_size if path.exists() else 0
        if have < state[key]:
            raise UsageError(f"{path} has {have} bytes but {prog.name} records {state[key]}: it was modified; "
                             "use --overwrite")
    return state


# --------------------------------------------------------------------------- the run
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m serving.tag", description="Tag a corpus with an ONNX export "
                                 "(streaming, several processes, resumable)")
    ap.add_argument("input", metavar="INPUT", help="text (one document per line), JSONL (a 'text' field) or CoNLL")
    ap.add_argument("--export", default="runs/student/onnx", help="export directory (python -m export.onnx)")
    ap.add_argument("--out", required=True, help="output file (JSONL or CoNLL)")
    ap.add_argument("--format", choices=FORMATS, default=None, help="input format (default: from the extension)")
    ap.add_argument("--out-format", choices=OUT_FORMATS, default=None,
                    help="output format (default: from OUT's extension, else conll for conll input, else jsonl)")
    ap.add_argument("--workers", type=int, default=1, help="processes, each with its own engine")
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime threads per worker (default: all cores for 1 worker, cores / workers)")
    ap.add_argument("--batch-size", type=int, default=256, help="records per chunk (read, tagged, written, checkpointed)")
    ap.add_argument("--onnx-batch", type=int, default=32, help="documents per ONNX Runtime call")
    ap.add_argument("--precision", default="fp32", help="which graph of the export (as for python -m serving)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--on-error", choices=["skip", "stop"], default="skip",
                    help="a malformed JSONL line: skip it (listed in OUT.errors.jsonl) or stop the run")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an interrupted run (OUT.progress.json)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    return ap


def _error(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return code


def main(argv=None) -> int:
    global _ENGINE
    ns = build_parser().parse_args(argv)
    try:
        a = TagArgs(**vars(ns))
        state = prepare_output(a)
    except UsageError as e:
        return _error(str(e))
    prog, errs = progress_path(a.out), errors_path(a.out)
    if state["done"]:
        print(f"{a.out}: already complete ({state['records']} records); nothing to do", file=sys.stderr)
        return 0

    # the first chunk is read before anything is created: a non-UTF-8 file fails with nothing written
    chunks = chunked(read_records(a.input, a.format, state["in_bytes"], state["in_lines"]), a.batch_size, a.on_error)
    try:
        first = [next(chunks)]
    except StopIteration:
        first = []
    except (InputError, BadRecord) as e:  # nothing was tagged in this run: the state is unchanged
        return _error(str(e) if isinstance(e, InputError) else _bad(a, e.args[0]))
    from serving.engine import EngineError, NerEngine

    try:  # with several workers this only checks the export: each worker loads its own engine
        engine = NerEngine.from_dir(a.export, device=a.device, threads=a.threads, precision=a.precision)
    except (EngineError, ValueError) as e:
        return _error(str(e))

    # the output: fresh (exclusive create) or truncated to what the progress file claims
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if state["records"] == 0:
        for p in (a.out, prog, errs):
            p.unlink(missing_ok=True)
        out = open(a.out, "xb")
    else:
        os.truncate(a.out, state["out_bytes"])
        out = open(a.out, "ab")
        if errs.exists():
            os.truncate(errs, state["errors_bytes"])
    write_progress(prog, state)
    err_file = None
    warned = 0

    from tqdm import tqdm

    size = max(1, a.input.stat().st_size)
    bar = tqdm(unit="doc", initial=state["records"], disable=None, file=sys.stderr, dynamic_ncols=True,
               desc=f"tagging {a.input.name}")
    pool = None
    if a.workers == 1:
        _ENGINE = engine

        def submit(chunk):
            return _Done(tag_chunk(chunk, a.out_format, a.onnx_batch))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        del engine
        import serving.tag as this  # the importable module, also when run as __main__ (spawned workers)

        pool = ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn"), initializer=this.init_engine,
                                   initargs=(a.export, a.precision, a.device, a.threads))

        def submit(chunk):
            return pool.submit(this.tag_chunk, chunk, a.out_format, a.onnx_batch)

    t0, docs0, code = time.perf_counter(), state["documents"], 0
    try:
        for chunk, (text, n_docs, n_ents) in ordered(itertools.chain(first, chunks), submit,
                                                      1 if a.workers == 1 else 2 * a.workers):
            out.write(text.encode("utf-8"))
            bad = [r for r in chunk if r.error is not None]
            if bad:
                if err_file is None:
                    err_file = open(errs, "ab")
                for r in bad:
                    err_file.write(_json({"line": r.line, "error": r.error, "input": r.raw}).encode("utf-8"))
                    if warned < MAX_WARNINGS:
                        print(f"warning: {a.input}:{r.line}: skipped: {r.error}", file=sys.stderr)
                    elif warned == MAX_WARNINGS:
                        print(f"warning: further skipped lines are listed in {errs} only", file=sys.stderr)
                    warned += 1
                err_file.flush()
                os.fsync(err_file.fileno())
            out.flush()
            os.fsync(out.fileno())
            last = chunk[-1]
            state.update(records=state["records"] + len(chunk), documents=state["documents"] + n_docs,
                         entities=state["entities"] + n_ents, skipped=state["skipped"] + len(bad),
                         in_bytes=last.end, in_lines=last.end_line, in_tail_sha256=tail_hash(a.input, last.end),
                         out_bytes=out.tell(), errors_bytes=err_file.tell() if err_file else state["errors_bytes"])
            write_progress(prog, state)
            bar.update(len(chunk))
            bar.set_postfix_str(f"{100 * last.end / size:.0f}% of input", refresh=False)
        state["done"] = True
        write_progress(prog, state)
    except InputError as e:
        code = _error(f"{e} (the {state['records']} records before it are in {a.out}; --resume continues)")
    except BadRecord as e:
        code = _error(f"{_bad(a, e.args[0])} (the run stopped; the {state['records']} records before it are in "
                      f"{a.out}; fix the line and --resume, or use --on-error skip)")
    except KeyboardInterrupt:
        code = _error(f"interrupted after {state['records']} records; --resume continues", 130)
    except Exception as e:  # a worker died or the engine failed: what was written stays resumable
        code = _error(f"tagging failed after {state['records']} records: {type(e).__name__}: {e}", 1)
    finally:
        bar.close()
        out.close()
        if err_file is not None:
            err_file.close()
        if pool is not None:
            pool.shutdown(wait=code == 0, cancel_futures=True)
    if code:
        return code
    dt = time.perf_counter() - t0
    done = state["documents"] - docs0
    skipped = (f"; {state['skipped']} malformed lines skipped (listed in {errs})" if state["skipped"] else "")
    print(f"tagged {done} documents in {dt:.1f} s ({done / max(dt, 1e-9):.1f} documents/s, {a.workers} worker"
          f"{'s' if a.workers > 1 else ''}); {a.out}: {state['documents']} documents, {state['entities']} entities"
          f"{skipped}", file=sys.stderr)
    return 0


def _bad(a: TagArgs, r: Record) -> str:
    return f"{a.input}:{r.line}: {r.error}"


if __name__ == "__main__":
    from serving.tag import main as _main  # the importable module's main (pickling for spawned workers)

    sys.exit(_main())
