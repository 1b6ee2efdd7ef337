"""Configuration of the training commands (training/config.py): config files and recipes, flags with
dashes and their underscore aliases, argument dataclasses that check themselves, and the one-line
errors of the command lines (a bad setting, a malformed or non-UTF-8 data file, no SystemExit in the
library)."""

import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from training import distill, evaluate, extra, layerwise, teacher, trainer
from training.config import RECIPES, ConfigError, parse_args

from conftest import ROOT, fails_one_line, minilm_tokenizer, tiny_bert_crf

TEACHER = (teacher.ModelArgs, trainer.TrainArgs)
DISTILL = (distill.DistillArgs, layerwise.LayerwiseArgs, trainer.TrainArgs, extra.ExtraArgs)


# ---------------------------------------------------------------- config files and recipes
def test_config_file_values_and_overrides(tmp_path):
    """JSON false, null, numbers and lists reach the dataclasses as they are; flags override them."""
    @dataclass
    class Extra:
        tags: list[str] = field(default_factory=lambda: ["a"])
        sizes: list[int] = field(default_factory=lambda: [1])

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"_comment": "ignored", "bucket": False, "threads": None, "epochs": 7, "lr": 3e-5,
                               "head-lr": 0.002, "tags": ["x", "y"], "sizes": [3, 4], "resume": True}))
    types = (trainer.TrainArgs, Extra)
    t, x = parse_args(types, ["--config", str(cfg)])
    assert t.bucket is False and t.threads is None and t.epochs == 7 and t.lr == 3e-5 and t.head_lr == 0.002
    assert x.tags == ["x", "y"] and x.sizes == [3, 4] and t.resume is True
    # flags override the file, before or after --config
    t, x = parse_args(types, ["--epochs", "2", "--config", str(cfg), "--bucket", "--threads", "1",
                              "--tags", "z", "--sizes", "5"])
    assert t.epochs == 2 and t.bucket is True and t.threads == 1 and x.tags == ["z"] and x.sizes == [5]
    assert t.lr == 3e-5


@pytest.mark.parametrize("content,match", [
    (json.dumps({"epochs": 7, "nosuch": 1}), r"c\.json: unknown key\(s\) nosuch"),
    ('{"epochs": 7,\n "lr": }', r"c\.json: line 2: not valid JSON"),
    (json.dumps({"patience": -3}), r"c\.json: --patience must be >= 0"),
    (json.dumps({"batch-size": 0}), r"c\.json: --batch-size must be >= 1"),
    (json.dumps([1, 2]), r"c\.json: a config file holds one JSON object"),
    ('{"epochs": 2, "_note": "caf\u00e9"}'.encode("latin-1"), r"c\.json: not UTF-8"),
])
def test_config_file_errors_name_the_file(tmp_path, capsys, content, match):
    cfg = tmp_path / "c.json"
    cfg.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=match):  # the library raises ...
        parse_args(TEACHER, ["--config", str(cfg)])
    out = tmp_path / "never"  # ... the command line prints one line and exits 2, before any work
    fails_one_line(capsys, teacher.main, ["--config", str(cfg), "--out", str(out)], match)
    assert not out.exists()
    with pytest.raises(ConfigError, match="cannot read config"):
        parse_args(TEACHER, ["--config", str(tmp_path / "missing.json")])


def test_config_file_gives_same_arguments(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": "some/encoder", "epochs": 7, "lr": 3e-5, "resume": True}))
    m1, t1 = parse_args(TEACHER, ["--config", str(cfg), "--seed", "4"])
    m2, t2 = parse_args(TEACHER, ["--model", "some/encoder", "--epochs", "7", "--lr", "3e-5", "--resume", "--seed", "4"])
    assert (m1, t1) == (m2, t2)
    assert t1.epochs == 7 and t1.seed == 4 and t1.resume


def test_recipe_best_parses_and_matches_make_run():
    dargs, largs, targs, xargs = parse_args(DISTILL, ["--recipe", "best", "--seed", "3"])
    assert dargs.method == "pos" and largs.hidden_weight > 0 and largs.emission_weight > 0
    assert xargs.kinds == ["mention-swap", "mask"]  # the default data has no unlabelled tweets: augmented train
    assert targs.epochs == 10 and targs.patience == 3 and targs.seed == 3
    recipe = json.loads((RECIPES / "best.json").read_text())
    make = (ROOT / "Makefile").read_text()
    # the undistilled baseline of `make run` gets the recipe's budget
    assert re.search(rf"^RECIPE_EPOCHS\s*\?=\s*{recipe['epochs']}\s*$", make, re.M)
    assert re.search(rf"^RECIPE_PATIENCE\s*\?=\s*{recipe['patience']}\s*$", make, re.M)
    assert "--recipe best" in make
    with pytest.raises(ConfigError, match=r"unknown recipe 'nosuch'; available: .*best"):
        parse_args(DISTILL, ["--recipe", "nosuch"])
    with pytest.raises(ConfigError, match="one --config or --recipe"):
        parse_args(DISTILL, ["--recipe", "best", "--config", "x.json"])


# ---------------------------------------------------------------- flags
def test_dashes_and_their_underscore_aliases(capsys):
    """Both spellings set the same field (the background grid passes --data_dir, --batch_size, ...);
    the help and the usage line show the dashes."""
    dashed = parse_args(DISTILL, ["--data-dir", "d", "--batch-size", "3", "--head-lr", "0.5", "--no-bucket",
                                  "--teacher-lr", "1e-6", "--hidden-weight", "1", "--extra-share", "0.25"])
    under = parse_args(DISTILL, ["--data_dir", "d", "--batch_size", "3", "--head_lr", "0.5", "--no_bucket",
                                 "--teacher_lr", "1e-6", "--hidden_weight", "1", "--extra_share", "0.25"])
    assert dashed == under
    assert dashed[2].batch_size == 3 and dashed[2].bucket is False and dashed[0].teacher_lr == 1e-6
    with pytest.raises(SystemExit) as e:
        parse_args(DISTILL, ["--help"], prog="python -m training.distill")
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: python -m training.distill")
    usage = help_text.split("\n\n")[0]
    assert "[--batch-size BATCH_SIZE]" in usage and "--batch_size" not in usage and "[--recipe NAME]" in usage
    assert "--batch-size BATCH_SIZE, --batch_size BATCH_SIZE" in help_text
    assert "--no-bucket, --no_bucket" in help_text and "--config FILE.json" in help_text
    with pytest.raises(ConfigError, match="unrecognized arguments: --nosuch 1"):
        parse_args(DISTILL, ["--nosuch", "1"])
    with pytest.raises(ConfigError, match="argument --epochs: invalid int value: 'x'"):
        parse_args(DISTILL, ["--epochs", "x"])


# ---------------------------------------------------------------- the dataclasses check themselves
@pytest.mark.parametrize("make,match", [
    (lambda: trainer.TrainArgs(batch_size=0), "--batch-size must be >= 1"),
    (lambda: trainer.TrainArgs(epochs=0), "--epochs must be >= 1"),
    (lambda: trainer.TrainArgs(log_every=0), "--log-every must be >= 1"),
    (lambda: trainer.TrainArgs(threads=0), "--threads must be >= 1"),
    (lambda: trainer.TrainArgs(lr=-1.0), "--lr must be >= 0"),
    (lambda: trainer.TrainArgs(warmup_ratio=1.5), r"--warmup-ratio must be in \[0, 1\]"),
    (lambda: trainer.TrainArgs(patience=-1), "--patience must be >= 0"),
    (lambda: trainer.TrainArgs(mixed_precision="fp8"), "--mixed-precision must be one of no, bf16, fp16"),
    (lambda: trainer.TrainArgs(device="tpu9"), "--device: unknown device 'tpu9'"),
    (lambda: teacher.ModelArgs(dropout=1.5), r"--dropout must be in \[0, 1\)"),
    (lambda: distill.DistillArgs(method="magic"), "--method must be one of none, topk, pos, struct, msd"),
    (lambda: distill.DistillArgs(quiz_split="test"), "--quiz-split must be one of holdout, dev"),
    (lambda: distill.DistillArgs(alpha=2.0), r"--alpha must be in \[0, 1\]"),
    (lambda: distill.DistillArgs(temperature=0.0), "--temperature must be > 0"),
    (lambda: distill.DistillArgs(topk=0), "--topk must be >= 1"),
    (lambda: distill.DistillArgs(meta_every=0), "--meta-every must be >= 1"),
    (lambda: layerwise.LayerwiseArgs(hidden_weight=-1.0), "--hidden-weight must be >= 0"),
    (lambda: extra.ExtraArgs(extra_share=1.0), r"--extra-share must be in \(0, 1\)"),
])
def test_argument_dataclasses_check_themselves(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_defaults_are_valid():
    for dc in (*TEACHER, *DISTILL):
        dc()


# ---------------------------------------------------------------- the command lines' errors
def test_library_raises_no_system_exit():
    """SystemExit / sys.exit only in the command lines' ``main`` (and the ``__main__`` guard)."""
    found = []
    for package in ("training", "export"):
        for path in sorted((ROOT / package).glob("*.py")):
            tree = ast.parse(path.read_text())
            for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
                if func.name in ("main", "_main"):
                    continue
                for node in ast.walk(func):
                    text = ast.unparse(node) if isinstance(node, (ast.Raise, ast.Call)) else ""
                    if (isinstance(node, ast.Raise) and "SystemExit" in text) or (
                            isinstance(node, ast.Call) and text.startswith("sys.exit(")):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} in {func.name}()")
    assert not found, found


def _bad_data(tmp_path, train: bytes, test: bytes = b"a O\n\n") -> str:
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.txt").write_bytes(train)
    (d / "dev.txt").write_bytes(b"b O\n\n")
    (d / "test.txt").write_bytes(test)
    return str(d)


BAD_DATA = [
    (b"anna B-PER\nlives O\n\nbob BAD\n\n", r"error: \S+train\.txt:4: bad tag 'BAD'"),
    (b"anna B-PER\nlives\n\n", r"error: \S+train\.txt:2: expected at least 2 columns"),
    ("z\u00fcrich B-LOC\n\n".encode("latin-1"), r"error: \S+train\.txt:1: not UTF-8 text"),
]


@pytest.mark.parametrize("train,match", BAD_DATA)
def test_teacher_cli_bad_data_file_is_one_line(tmp_path, capsys, train, match):
    data, out = _bad_data(tmp_path, train), tmp_path / "run"
    line = fails_one_line(capsys, teacher.main, ["--dataset", data, "--out", str(out), "--threads", "1"], match)
    assert str(tmp_path) in line  # the file is named with its path
    assert not out.exists()  # refused before the run directory is made


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "teacher"
    tiny_bert_crf().save(run / "best", minilm_tokenizer(), {"kind": "teacher", "args": {"max_length": 128}})
    return run


@pytest.mark.parametrize("train,match", BAD_DATA[::2])
def test_distill_and_evaluate_cli_bad_data_file_is_one_line(tiny_teacher, tmp_path, capsys, train, match):
    data, out = _bad_data(tmp_path, train), tmp_path / "run"
    fails_one_line(capsys, distill.main, ["--teacher", str(tiny_teacher), "--dataset", data, "--out", str(out),
                                          "--threads", "1", "--method", "pos"], match)
    assert not out.exists()
    assert evaluate.main([str(tiny_teacher), "--dataset", data, "--split", "train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err


def test_cli_process_prints_no_traceback(tmp_path):
    data = _bad_data(tmp_path, b"a O\n\n", test=b"x O\n\xff\xfe B-PER\n\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "training.teacher", "--dataset", data, "--out", str(tmp_path / "run"),
                        "--threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {data}/test.txt:2: not UTF-8 text (invalid start byte)"]
