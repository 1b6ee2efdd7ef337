"""Bulk tagging (issue 17): `python -m serving.tag` on a tiny exported BERT-CRF -- every input and
output format against the engine's own answers, 1 vs 2 workers, resume after a crash and after
SIGKILL, streaming bounds, bad input, the torch-free import path."""
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_tiny_export
from serving import tag
from serving.engine import NerEngine, split_words, tags_to_spans

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "Angela Merkel visited Washington on Tuesday.",
    "",
    "  Zürich,  Reykjavík   and  São Paulo  —  (ÁNNA) said: \"hello\"!  ",
    "@jenny_x omg best pizza in Brooklyn!!! #foodie http://t.co/abc 😀",
    "Paris",
    " ".join(["The European Commission said on Thursday it disagreed with German advice ."] * 20),  # windows
]
CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter\tNNP\tB-NP\tB-PER
Blackburn\tNNP\tI-NP\tI-PER
-DOCSTART- -X- -X- O
BRUSSELS NNP B-NP B-LOC


1996-08-22 CD I-NP O
"""


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("tag_run"), seed=1)


@pytest.fixture(scope="module")
def engine(export_dir):
    return NerEngine.from_dir(export_dir, threads=1)


def run(*args) -> tuple[int, str]:
    """``python -m serving.tag`` in-process; (exit code, stderr)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = tag.main([str(a) for a in args])
    return code, err.getvalue()


def cli(export_dir, inp, out, *extra):
    return run(inp, "--export", export_dir, "--out", out, "--threads", 1, *extra)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def many_texts(n):
    base = ["Anna Smith visited Paris on Monday .", "the red cross office in new york hired bob",
            "Zürich", "", "EU rejects German call to boycott British lamb ."]
    return [f"{base[i % len(base)]} {i}" if i % 7 else base[i % len(base)] for i in range(n)]


# --------------------------------------------------------------------------- formats
def test_txt_and_jsonl_equal_engine_predict(export_dir, engine, tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    code, err = cli(export_dir, inp, tmp_path / "out.jsonl", "--batch-size", 4, "--onnx-batch", 3)
    assert code == 0, err
    got = read_jsonl(tmp_path / "out.jsonl")
    # the same texts in the same batches (chunks of 4, ONNX batches of 3)
    ref = engine.predict(TEXTS[:4], batch_size=3) + engine.predict(TEXTS[4:], batch_size=3)
    assert [g["text"] for g in got] == TEXTS  # one line per input line, empty ones included
    assert [g["entities"] for g in got] == [[e.to_dict() for e in es] for es in ref]
    assert sum(map(len, ref)) > 5 and "documents/s" in err and f"{len(TEXTS)} documents" in err
    for g in got:  # offsets index the original text
        assert all(g["text"][e["start"]:e["end"]] == e["text"] for e in g["entities"])

    # JSONL: other fields pass through, in order; an input `entities` is replaced
    rows = [{"id": i, "text": t, "meta": {"k": [i, None]}, "entities": "old"} for i, t in enumerate(TEXTS)]
    jin = tmp_path / "in.jsonl"
    jin.write_text("\n".join(json.dumps(r, ensure_ascii=i % 2 == 0) for i, r in enumerate(rows)) + "\n\n",
                   encoding="utf-8")
    code, err = cli(export_dir, jin, tmp_path / "j.jsonl", "--batch-size", 4, "--onnx-batch", 3)
    assert code == 0, err
    got_j = read_jsonl(tmp_path / "j.jsonl")
    assert [list(g) for g in got_j] == [["id", "text", "meta", "entities"]] * len(TEXTS)
    assert [{k: g[k] for k in ("id", "text", "meta")} for g in got_j] == [
        {k: r[k] for k in ("id", "text", "meta")} for r in rows]
    assert [g["entities"] for g in got_j] == [g["entities"] for g in got]
    assert not (tmp_path / "j.jsonl.errors.jsonl").exists()

    # txt -> CoNLL: split_words' words and the Viterbi tags; empty documents give no sentence
    code, err = cli(export_dir, inp, tmp_path / "out.conll", "--batch-size", 4)
    assert code == 0, err
    blocks = (tmp_path / "out.conll").read_text(encoding="utf-8").split("\n\n")
    assert blocks[-1] == ""
    words = [split_words(t)[0] for t in TEXTS if split_words(t)[0]]
    assert [[line.split("\t") for line in b.split("\n")] for b in blocks[:-1]] == [
        [[w, t] for w, t in zip(ws, ts)] for ws, ts in zip(words, engine.tag_words(words))]


def test_conll_in_conll_and_jsonl_out(export_dir, engine, tmp_path):
    inp = tmp_path / "in.conll"
    inp.write_text(CONLL, encoding="utf-8")
    sents = [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["BRUSSELS"], ["1996-08-22"]]
    tags = engine.tag_words(sents)
    code, err = cli(export_dir, inp, tmp_path / "out.conll")
    assert code == 0, err
    lines = iter(CONLL.replace("\n\n\n", "\n\n").splitlines())
    sep = {"Peter": "\t", "Blackburn": "\t"}
    want = ["-DOCSTART- -X- -X- O", ""]  # passed through, followed by a blank line
    for ws, ts in zip(sents, tags):
        if ws == ["BRUSSELS"]:
            want += ["-DOCSTART- -X- -X- O", ""]
        for w, t in zip(ws, ts):
            line = next(x for x in lines if x.split() and x.split()[0] == w)
            want.append(f"{line}{sep.get(w, ' ')}{t}")
        want.append("")
    assert (tmp_path / "out.conll").read_text(encoding="utf-8").split("\n") == want + [""]

    # CoNLL -> JSONL: docstarts left out; offsets into the words joined by spaces, = predict_words
    code, err = cli(export_dir, inp, tmp_path / "out.jsonl")
    assert code == 0, err
    got = read_jsonl(tmp_path / "out.jsonl")
    assert [g["words"] for g in got] == sents and [g["text"] for g in got] == [" ".join(s) for s in sents]
    assert [g["entities"] for g in got] == [[e.to_dict() for e in es] for es in engine.predict_words(sents)]
    assert [[(e["word_start"], e["word_end"], e["label"]) for e in g["entities"]] for g in got] == [
        tags_to_spans(t) for t in tags]


# --------------------------------------------------------------------------- streaming
def test_reader_is_a_lazy_generator(tmp_path):
    big = tmp_path / "big.jsonl"
    line = json.dumps({"text": "Anna visited Paris", "id": 0}) + "\n"
    big.write_text(line * 50_000)  # ~2 MB
    gen = tag.read_records(big, "jsonl")
    assert inspect.isgenerator(gen)
    first = next(gen)
    assert first.line == 1 and first.end == len(line) and first.fields == {"text": "Anna visited Paris", "id": 0}
    f = gen.gi_frame.f_locals["f"]  # the file under the generator: only a buffer has been read
    assert f.tell() < 100_000 < big.stat().st_size
    assert inspect.isgeneratorfunction(tag.chunked) and inspect.isgeneratorfunction(tag.ordered)
    # resuming from a record's end offset continues with the next record and its line number
    second = next(gen)
    again = next(tag.read_records(big, "jsonl", first.end, first.end_line))
    assert (again.line, again.end, again.fields) == (second.line, second.end, second.fields)


def test_ordered_bounds_read_ahead_and_keeps_order():
    read, yielded, submitted = [], [], []

    def chunks():
        for i in range(20):
            read.append(i)
            yield [i]
        raise tag.BadRecord("stop here")

    class Fut:
        def __init__(self, c):
            self.c = c
            submitted.append(c[0])

        def result(self):
            return self.c[0] * 10

    with pytest.raises(tag.BadRecord):
        for chunk, res in tag.ordered(chunks(), Fut, max_pending=3):
            assert len(read) - len(yielded) <= 3  # never more than 3 chunks read and not yet written
            yielded.append(chunk[0])
            assert res == chunk[0] * 10
    assert yielded == list(range(20))  # every chunk read before the failure is written first


# --------------------------------------------------------------------------- workers, resume
def test_two_workers_and_resume_after_sigkill(export_dir, tmp_path):
    """A run with 2 workers killed with SIGKILL mid-way, resumed with 2 workers, equals an
    uninterrupted single-process run byte for byte."""
    texts = many_texts(600)
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(texts) + "\n", encoding="utf-8")
    ref = tmp_path / "ref.jsonl"
    code, err = cli(export_dir, inp, ref, "--batch-size", 6)
    assert code == 0, err
    out = tmp_path / "out.jsonl"
    prog = tag.progress_path(out)
    cmd = [sys.executable, "-m", "serving.tag", str(inp), "--export", str(export_dir), "--out", str(out),
           "--threads", "1", "--workers", "2", "--batch-size", "6"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        try:
            if json.loads(prog.read_text())["records"] >= 18:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    assert p.poll() is None, "the run ended before it could be killed: " + p.stderr.read().decode()[-500:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    time.sleep(0.5)  # the orphaned workers notice their parent's death
    state = json.loads(prog.read_text())
    assert 18 <= state["records"] < len(texts) and not state["done"]
    assert out.stat().st_size >= state["out_bytes"]  # never claims more than was written
    assert out.read_bytes()[:state["out_bytes"]] == ref.read_bytes()[:state["out_bytes"]]

    code, err = cli(export_dir, inp, out)
    assert code == 2 and err.startswith("error: ") and "--resume" in err  # exists: never overwritten
    r = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == ref.read_bytes()
    assert json.loads(prog.read_text())["done"]
    code, err = cli(export_dir, inp, out, "--resume")  # a finished run: nothing to do
    assert code == 0 and "already complete" in err and out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("fmt", ["jsonl", "conll"])
def test_resume_after_crash_between_write_and_checkpoint(export_dir, tmp_path, monkeypatch, fmt):
    """The worst moment: a chunk written to OUT (and the errors file) but not yet recorded."""
    if fmt == "jsonl":
        lines = [json.dumps({"text": t, "n": i}) for i, t in enumerate(many_texts(60))]
        for i in (5, 17, 33, 50):
            lines[i] = ["{oops", "[1, 2]", '{"text": null}', "NaN"][(i // 10) % 4]
        body = "\n".join(lines) + "\n"
    else:
        body = "".join(("-DOCSTART- -X- -X- O\n\n" if i % 9 == 0 else "")
                       + "".join(f"{w} X {w}\n" for w in t.split()) + "\n" for i, t in enumerate(many_texts(60)) if t)
    inp = tmp_path / f"in.{fmt}"
    inp.write_text(body, encoding="utf-8")
    ref, out = tmp_path / f"ref.{fmt}", tmp_path / f"out.{fmt}"
    code, err = cli(export_dir, inp, ref, "--batch-size", 7)
    assert code == 0, err

    real, calls = tag.write_progress, []

    def crash(path, state):
        calls.append(state["records"])
        if len(calls) == 4:  # the initial write, 2 chunks recorded, the 3rd written but not recorded
            raise KeyboardInterrupt
        real(path, state)

    monkeypatch.setattr(tag, "write_progress", crash)
    code, err = cli(export_dir, inp, out, "--batch-size", 7)
    assert code == 130 and "--resume" in err
    monkeypatch.setattr(tag, "write_progress", real)
    state = json.loads(tag.progress_path(out).read_text())
    assert state["records"] == 14 and out.stat().st_size > state["out_bytes"]  # the 3rd chunk is on disk
    code, err = cli(export_dir, inp, out, "--batch-size", 5, "--resume")  # other chunking: same output
    assert code == 0, err
    assert out.read_bytes() == ref.read_bytes()
    errs, ref_errs = tag.errors_path(out), tag.errors_path(ref)
    if fmt == "jsonl":
        assert errs.read_bytes() == ref_errs.read_bytes()
        assert [e["line"] for e in read_jsonl(errs)] == [6, 18, 34, 51]
        assert "4 malformed lines skipped" in err
        assert len(read_jsonl(out)) == 56 and [r["n"] for r in read_jsonl(out)][:6] == [0, 1, 2, 3, 4, 6]
    else:
        assert not errs.exists() and not ref_errs.exists()


# --------------------------------------------------------------------------- bad input
def test_bad_jsonl_lines_skip_and_stop(export_dir, tmp_path):
    lines = ['{"text": "Anna in Paris", "id": 1}', "{not json", "[1]", '{"id": 3}', '{"text": 3}',
             '{"text": "x", "v": NaN}', '{"text": "\\ud800"}', '{"text": "Bob", "id": 8}']
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, err = cli(export_dir, inp, out, "--batch-size", 3)
    assert code == 0, err
    assert [r["id"] for r in read_jsonl(out)] == [1, 8]
    errors = read_jsonl(tag.errors_path(out))
    assert [e["line"] for e in errors] == [2, 3, 4, 5, 6, 7]
    assert [e["input"] for e in errors] == lines[1:7]
    for part in ("not JSON", "not a JSON object (an array)", 'no "text" field', '"text" is not a string (a number)',
                 "NaN is not JSON", "lone surrogate"):
        assert any(part in e["error"] for e in errors), part
    assert f"warning: {inp}:2: skipped: not JSON" in err and "6 malformed lines skipped" in err

    # --on-error stop: the records before the bad one are written, the line is named, exit 2
    out2 = tmp_path / "stop.jsonl"
    code, err = cli(export_dir, inp, out2, "--batch-size", 1, "--on-error", "stop")
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: {inp}:2: not JSON")
    assert [r["id"] for r in read_jsonl(out2)] == [1]
    assert json.loads(tag.progress_path(out2).read_text())["records"] == 1
    # the bad line first: nothing is created
    first_bad = tmp_path / "first_bad.jsonl"
    first_bad.write_text("\n".join(lines[1:]) + "\n", encoding="utf-8")
    code, err = cli(export_dir, first_bad, tmp_path / "none.jsonl", "--on-error", "stop")
    assert code == 2 and err == f"error: {first_bad}:1: not JSON (Expecting property name enclosed in double " \
                                "quotes: line 1 column 2 (char 1))\n"
    assert not list(tmp_path.glob("none.jsonl*"))
    # the line fixed (the lines before it unchanged), resumed: continues after record 1
    inp.write_text("\n".join([lines[0], '{"text": "fixed", "id": 2}', lines[-1]]) + "\n", encoding="utf-8")
    code, err = cli(export_dir, inp, out2, "--batch-size", 1, "--resume")
    assert code == 0, err
    assert [r["id"] for r in read_jsonl(out2)] == [1, 2, 8]


def test_bad_input_one_line_exit_2(export_dir, tmp_path):
    good = tmp_path / "ok.txt"
    good.write_text("Anna in Paris\n", encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"Anna in Paris\nZ\xfcrich\n")
    weird = tmp_path / "in.csv"
    weird.write_text("x\n")
    exists = tmp_path / "exists.jsonl"
    exists.write_text("precious\n")
    cases = [
        ((good, "--export", export_dir, "--out", tmp_path / "a.jsonl", "--workers", 0), "--workers must be >= 1"),
        ((tmp_path / "missing.txt", "--export", export_dir, "--out", tmp_path / "b.jsonl"), "no such input file"),
        ((tmp_path, "--export", export_dir, "--out", tmp_path / "c.jsonl"), "not a file"),
        ((latin, "--export", export_dir, "--out", tmp_path / "d.jsonl"), f"{latin}:2: not UTF-8"),
        ((weird, "--export", export_dir, "--out", tmp_path / "e.jsonl"), "pass --format"),
        ((good, "--export", export_dir, "--out", exists), "pass --resume"),
        ((good, "--export", tmp_path / "nowhere", "--out", tmp_path / "f.jsonl"), "no such export directory"),
        ((good, "--export", export_dir, "--out", tmp_path / "g.jsonl", "--precision", "fp7"), "fp7"),
        ((good, "--export", export_dir, "--out", good, "--overwrite"), "would overwrite the input"),
        ((good, "--export", export_dir, "--out", exists, "--resume"), "cannot tell what was done"),
    ]
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.txt"
        locked.write_text("x\n")
        locked.chmod(0)
        cases.append(((locked, "--export", export_dir, "--out", tmp_path / "h.jsonl"), "cannot read"))
    for args, msg in cases:
        code, err = run(*args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and msg in err, (args, err)
    assert exists.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ok.txt", "latin.txt", "in.csv", "exists.jsonl"] + (["locked.txt"] if os.geteuid() != 0 else []))
    with pytest.raises(SystemExit):  # argparse: unknown choice
        run(good, "--out", tmp_path / "x.jsonl", "--on-error", "ignore")


def test_non_utf8_later_in_the_file_stops_resumably(export_dir, tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_bytes(("Anna in Paris\n" * 10).encode() + b"caf\xe9\n" + b"Bob\n")
    out = tmp_path / "out.jsonl"
    code, err = cli(export_dir, inp, out, "--batch-size", 4)
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: {inp}:11: not UTF-8")
    assert len(read_jsonl(out)) == 8 and json.loads(tag.progress_path(out).read_text())["records"] == 8
    code, err = cli(export_dir, inp, out, "--batch-size", 4, "--resume")  # the same line again
    assert code == 2 and f"{inp}:11: not UTF-8" in err


def test_resume_refuses_other_settings_or_changed_input(export_dir, tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("Anna in Paris\n" * 10, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert cli(export_dir, inp, out, "--batch-size", 4)[0] == 0
    state = json.loads(tag.progress_path(out).read_text())
    state.update(done=False, records=4)
    tag.write_progress(tag.progress_path(out), state)
    code, err = cli(export_dir, inp, out, "--resume", "--out-format", "conll")
    assert code == 2 and "other settings" in err and "out_format" in err
    inp.write_text("Bob in Oslo\n" * 10, encoding="utf-8")
    code, err = cli(export_dir, inp, out, "--resume")
    assert code == 2 and "changed since the interrupted run" in err


# --------------------------------------------------------------------------- torch-free
def test_tag_cli_is_torch_free(export_dir, tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("Angela Merkel visited Paris .\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = (
        "import sys\n"
        "from serving.tag import main\n"
        f"rc = main([{str(inp)!r}, '--export', {str(export_dir)!r}, '--out', {str(out)!r}, '--threads', '1'])\n"
        "assert rc == 0, rc\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum', "
        "'safetensors', 'training'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(read_jsonl(out)) == 1


# --------------------------------------------------------------------------- benchmark
def test_tag_bench_tiny(export_dir, tmp_path, capsys):
    from benchmarks import tag_bench

    assert tag_bench.main(["--export", str(export_dir), "--data-dir", str(tmp_path / "none"),
                           "--out", str(tmp_path / "res")]) == 0
    assert "skipped" in capsys.readouterr().err and not (tmp_path / "res").exists()
    data = tmp_path / "data" / "conll2003"
    data.mkdir(parents=True)
    (data / "test.txt").write_text(CONLL, encoding="utf-8")
    assert tag_bench.main(["--export", str(export_dir), "--data-dir", str(tmp_path / "data"), "--sentences", "40",
                           "--workers", "1", "--out", str(tmp_path / "res")]) == 0
    rep = json.loads((tmp_path / "res" / "tag.json").read_text())
    assert [(r["corpus"], r["sentences"], r["documents"], r["workers"]) for r in rep["results"]] == [
        ("full", 40, 40, 1), ("tenth", 4, 4, 1)]
    assert all(r["peak_rss_tree_bytes"] > 10 * 2**20 for r in rep["results"])
    assert "| full | 40 |" in (tmp_path / "res" / "tag.md").read_text()
