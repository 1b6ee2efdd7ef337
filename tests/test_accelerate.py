"""Several processes (accelerate launch / torchrun, gloo on CPU) and mixed precision.

A tiny random BERT-CRF without dropout: 2 processes with the same global batch make the same
updates as 1 process (uneven batches included: 85 sentences in batches of 7, the last one of a
single sentence); evaluation under 2 processes equals evaluation under 1; a 2-process run killed in
epoch 2 resumes under 2 processes (bit for bit) and under 1 process; MSD under 2 processes keeps
one teacher (checked across the processes); bf16 autocast on CPU is close to float32.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training import crf, evaluate, teacher, trainer
from training import model as model_lib

from conftest import ROOT, TOY_LABELS, make_tiny_encoder

LAUNCH_TIMEOUT = 240  # seconds per launch: generous for a loaded 2-core machine

# Runs training.teacher / training.distill in each process, optionally stopping in an epoch (a
# process killed mid-epoch) and checking at the end of trainer.run that every process holds the
# same weights (student and extras such as MSD's teacher).
HARNESS = r'''
import os, shutil, sys
import torch
import torch.distributed as dist
from training import trainer

real_tqdm, real_run = trainer.tqdm, trainer.run
stop = os.environ.get("STOP_EPOCH")

def killing(it, *a, desc="", **k):
    def gen():
        for i, b in enumerate(it):
            if stop and desc.startswith(f"epoch {stop}/") and i == 3:
                raise KeyboardInterrupt
            yield b
    return real_tqdm(gen(), *a, desc=desc, **k)

def checked_run(fit):
    result = real_run(fit)
    for module in [fit.model, *(m for m, _, _ in fit.extras.values())]:
        flat = torch.cat([p.detach().reshape(-1).double() for p in module.parameters()])
        both = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(both, flat)
        assert all(torch.equal(both[0], x) for x in both), "processes hold different weights"
    print(f"SYNC-CHECKED rank {dist.get_rank()}", flush=True)
    return result

trainer.tqdm, trainer.run = killing, checked_run
module, argv = sys.argv[1], sys.argv[2:]
main = __import__(f"training.{module}", fromlist=["main"]).main
if stop:
    try:
        main(argv)
    except KeyboardInterrupt:
        pass
    out = argv[argv.index("--out") + 1]
    if dist.get_rank() == 0:
        shutil.copytree(out, out + "-killed")
    dist.barrier()
    stop = None
    main(argv + ["--resume"])
else:
    main(argv)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd, **kw):
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, **kw)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def accelerate_launch(module: str, argv: list[str], nproc: int = 2):
    """``accelerate launch`` on this machine's CPUs (no GPU here: each process uses gloo)."""
    return _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                 "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
                 "-m", f"training.{module}", *argv])


def torchrun_harness(tmp_path, module: str, argv: list[str], nproc: int = 2, stop_epoch: int | None = None):
    script = tmp_path / "harness.py"
    script.write_text(HARNESS)
    env = _env() | ({"STOP_EPOCH": str(stop_epoch)} if stop_epoch else {})
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                        str(script), module, *argv],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert p.stdout.count("SYNC-CHECKED") == nproc, p.stdout[-2000:]  # an interrupted run does not get there
    return p


@pytest.fixture(scope="module")
def enc_dir(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("enc_nodrop"), layers=2, dropout=0.0)


def _argv(enc_dir, data_dir, out, epochs=2, *extra):
    # 85 sentences in global batches of 7: 12 batches split 4/3 and a last one of 1 sentence
    # (the second process gets no row); dev/test batches of 5 dealt unevenly to 2 processes
    return ["--model", str(enc_dir), "--dataset", str(data_dir), "--out", str(out), "--epochs", str(epochs),
            "--batch_size", "7", "--limit_train", "85", "--eval_batch_size", "5", "--lr", "1e-3",
            "--head_lr", "1e-2", "--threads", "1", "--log_every", "5", *extra]


def _weights(run: Path, sub: str = "last") -> dict:
    d = run / sub
    return load_file(str(d / "model.safetensors")) | {f"crf.{k}": v for k, v in
                                                      load_file(str(d / "crf.safetensors")).items()}


def _assert_close(a: dict, b: dict, exact: bool = False):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def _epochs(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()
            if '"dev_f1"' in l and '"final"' not in l]


@pytest.fixture(scope="module")
def runs(enc_dir, toy_data_dir, tmp_path_factory):
    """The same teacher run by 2 processes (accelerate launch) and by 1 (in this process)."""
    d = tmp_path_factory.mktemp("acc_runs")
    accelerate_launch("teacher", _argv(enc_dir, toy_data_dir, d / "two"))
    teacher.main(_argv(enc_dir, toy_data_dir, d / "one"))
    return d


def test_two_processes_make_the_updates_of_one(runs):
    _assert_close(_weights(runs / "one"), _weights(runs / "two"))
    one, two = _epochs(runs / "one"), _epochs(runs / "two")
    assert [r["epoch"] for r in two] == [0, 1, 2]
    assert [r["dev_f1"] for r in one] == [r["dev_f1"] for r in two]
    for a, b in zip(one[1:], two[1:]):
        assert b["processes"] == 2 and "processes" not in a
        assert b["mean_loss"] == pytest.approx(a["mean_loss"], rel=1e-4)  # the global batch's loss
    # written once, by the main process
    assert len([l for l in (runs / "two" / "log.jsonl").read_text().splitlines() if '"final"' in l]) == 1


def test_evaluation_two_processes_equals_one(runs, enc_dir, toy_data_dir):
    two = json.loads((runs / "two" / "metrics.json").read_text())
    model, tok, info = model_lib.load(runs / "two")
    splits = teacher.load_data(trainer.TrainArgs(dataset=str(toy_data_dir), limit_train=85))
    for split in ("dev", "test"):
        enc = teacher.encode_splits(splits, tok, TOY_LABELS, 128)[split]
        one = evaluate.evaluate(model, enc, getattr(splits, split), batch_size=5)
        assert two[split]["sentences"] == one["sentences"] == 24
        assert two[split]["support"] == one["support"]
        for m in ("f1", "precision", "recall"):
            assert two[split][m] == one[m], (split, m)
        assert two[split]["loss"] == pytest.approx(one["loss"], rel=1e-6)


def test_killed_run_resumes_under_two_and_under_one_process(runs, enc_dir, toy_data_dir, tmp_path):
    out = tmp_path / "killed"
    # killed in epoch 2 (after 3 batches) under 2 processes, then --resume under 2 processes
    torchrun_harness(tmp_path, "teacher", _argv(enc_dir, toy_data_dir, out), stop_epoch=2)
    killed = Path(str(out) + "-killed")
    assert json.loads((killed / "last" / "trainer_state.json").read_text())["epoch"] == 1
    assert not (killed / "metrics.json").exists()
    _assert_close(_weights(runs / "two"), _weights(out), exact=True)  # same processes: bit for bit
    assert [r["epoch"] for r in _epochs(out)] == [0, 1, 2]  # epoch 1 was not trained twice
    # the same killed run resumed by 1 process
    teacher.main(_argv(enc_dir, toy_data_dir, killed, 2, "--resume"))
    _assert_close(_weights(runs / "two"), _weights(killed))
    assert [r["epoch"] for r in _epochs(killed)] == [0, 1, 2]


def test_msd_under_two_processes_keeps_one_teacher(runs, toy_data_dir, tmp_path):
    out = tmp_path / "msd"
    argv = ["--method", "msd", "--teacher", str(runs / "one"), "--out", str(out), "--epochs", "1",
            "--dataset", str(toy_data_dir), "--batch_size", "7", "--limit_train", "85", "--eval_batch_size", "5",
            "--threads", "1", "--lr", "1e-3", "--head_lr", "1e-2"]
    torchrun_harness(tmp_path, "distill", argv)  # asserts equal student and teacher weights on both processes
    before, after = _weights(runs / "one", "best"), _weights(out, "teacher")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the teacher was updated
    assert json.loads((out / "metrics.json").read_text())["test"]["sentences"] == 24


def test_bf16_autocast_on_cpu_is_close_to_float32(enc_dir, toy_data_dir, tmp_path):
    torch.manual_seed(0)
    model = model_lib.BertCrf.from_encoder(str(enc_dir), TOY_LABELS)
    tok = model_lib.load_tokenizer(str(enc_dir))
    splits = teacher.load_data(trainer.TrainArgs(dataset=str(toy_data_dir)))
    from training import data as data_lib

    enc = data_lib.encode(splits.train[:16], tok, {l: i for i, l in enumerate(TOY_LABELS)})
    batch = next(data_lib.batches(enc, 16))
    batch.pop("index")
    loss32 = model.nll(batch).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = model(batch)
        assert p.emissions.dtype == torch.bfloat16  # the encoder ran in bf16 ...
        per_sentence = crf.nll(p.emissions, batch["labels"], p.mask, p.transitions, p.start, p.end)
        assert per_sentence.dtype == torch.float32  # ... the CRF in float32
        loss16 = model.nll(batch)
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    assert loss16.item() == pytest.approx(loss32.item(), rel=2e-2)
    loss16.backward()
    assert all(torch.isfinite(q.grad).all() for q in model.parameters() if q.grad is not None)

    out = tmp_path / "bf16"
    teacher.main(_argv(enc_dir, toy_data_dir, out, 1, "--mixed_precision", "bf16", "--limit_train", "14"))
    assert json.loads((out / "best" / "run.json").read_text())["args"]["mixed_precision"] == "bf16"
    assert all(r["mean_loss"] > 0 for r in _epochs(out)[1:])


@pytest.mark.parametrize("flag", [["--mixed_precision", "fp8"], ["--mixed-precision", "fp16"],
                                  ["--device", "tpu9"], ["--device", "cuda:1"]])
def test_bad_precision_or_device_exit_2(enc_dir, toy_data_dir, tmp_path, capsys, flag):
    if flag[-1] == "cuda:1" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "bad"
    with pytest.raises(SystemExit) as e:
        teacher.main(_argv(enc_dir, toy_data_dir, out, 1, *flag))
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not out.exists()  # refused before any work
