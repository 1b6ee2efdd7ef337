"""The training loop shared by teacher fine-tuning and distillation.

One loop: epochs over deterministic batches (order fixed by ``seed + epoch``), a caller-supplied
``step`` that does the backward pass and optimizer updates, tqdm progress, a JSONL log, dev F1
after every epoch, the best-on-dev checkpoint kept in ``RUN/best``, and the full resume state in
``RUN/last`` (model, optimizers, schedulers, extra modules such as MSD's teacher), both written
atomically. ``--resume`` restarts after the last finished epoch.

Optimizer state is stored as safetensors (+ JSON for scalars), never pickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from training import checkpoint as ckpt
from training import evaluate as eval_lib


@dataclass
class TrainArgs:
    """Arguments shared by ``training.teacher`` and ``training.distill``."""

    dataset: str = field(default="default", metadata={"help": "default | conll2003 | wikiann | conll2000 | a folder"})
    data_dir: str | None = field(default=None, metadata={"help": "local data folder (e.g. ../shared/data)"})
    out: str = field(default="runs/teacher", metadata={"help": "run directory"})
    epochs: int = 3
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int = field(default=128, metadata={"help": "max sub-tokens per sentence (words beyond are cut and reported)"})
    lr: float = field(default=5e-5, metadata={"help": "encoder learning rate"})
    head_lr: float = field(default=1e-3, metadata={"help": "learning rate of the classifier head and the CRF"})
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    resume: bool = field(default=False, metadata={"help": "continue an interrupted run from RUN/last"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing run directory"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads"})
    limit_train: int | None = field(default=None, metadata={"help": "use only the first N train sentences"})
    limit_eval: int | None = field(default=None, metadata={"help": "use only the first N dev/test sentences"})
    log_every: int = 50
    bucket: bool = field(default=True, metadata={"help": "batch sentences of similar length (less padding)"})
    device: str = "cpu"


def parse_args(dataclass_types, argv=None):
    """Dataclass arguments from the command line, or from a JSON file: ``--config FILE.json``
    (command-line flags given after it override the file)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        path = argv[i + 1]
        del argv[i : i + 2]
        cfg = json.loads(Path(path).read_text())
        defaults = []
        for k, v in cfg.items():
            if isinstance(v, bool):
                if v:
                    defaults.append(f"--{k}")
            elif v is not None:
                defaults += [f"--{k}", str(v)]
        argv = defaults + argv
    return parser.parse_args_into_dataclasses(args=argv)


def make_optimizer(model, lr: float, head_lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the encoder at ``lr`` and the head + CRF at ``head_lr``; no decay on biases/LayerNorm."""
    head = model.head_parameter_names()
    groups: dict[tuple[bool, bool], list] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = n.endswith("bias") or "LayerNorm" in n or n.startswith("crf.")
        groups.setdefault((n in head, no_decay), []).append(p)
    return adam([
        {"params": ps, "lr": head_lr if is_head else lr, "weight_decay": 0.0 if nd else weight_decay}
        for (is_head, nd), ps in sorted(groups.items())
    ], cls=torch.optim.AdamW)


def adam(params, lr: float | None = None, cls=torch.optim.Adam) -> torch.optim.Optimizer:
    """Adam(W) with the fused kernel (about 6x faster steps on CPU here) where the device has it."""
    kwargs = {} if lr is None else {"lr": lr}
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return cls(params, **kwargs)


def linear_warmup(optimizer, total_steps: int, warmup_ratio: float):
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), max(total_steps, 1))


def update(loss: torch.Tensor, model, optimizer, scheduler, grad_clip: float) -> None:
    """One optimizer update: backward, gradient clipping (``grad_clip <= 0``: none), step, schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        state: dict[int, dict] = {}
        for key in f.keys():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = f.get_tensor(key)
    for pid, sc in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def prepare_run_dir(args: TrainArgs) -> Path:
    """Refuse to clobber a finished or partial run unless --resume or --overwrite."""
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (args.resume or args.overwrite):
        raise SystemExit(
            f"error: {out} already exists. Use --resume to continue it, --overwrite to replace it, "
            f"or --out to choose another directory."
        )
    if out.exists() and args.overwrite and not args.resume:
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class Fit:
    """Everything the loop needs. ``step(batch) -> dict`` does forward, backward and the optimizer
    updates and returns scalars to log (it must include ``tokens``, the sub-tokens processed)."""

    args: TrainArgs
    model: torch.nn.Module
    tokenizer: object
    run_info: dict
    train_batches: Callable[[int], Iterable[dict]]  # epoch -> batches
    steps_per_epoch: int
    step: Callable[[dict], dict]
    dev: tuple  # (encoded, sentences) for the model being trained
    test: tuple
    optimizers: dict = field(default_factory=dict)
    schedulers: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)  # name -> (module, tokenizer, run_info): saved in last/ and beside best
    on_epoch_start: Callable[[int], None] | None = None
    on_epoch_end: Callable[[int], dict | None] | None = None  # after dev eval (epoch 0: before training); returns logs


def _save_state(fit: Fit, directory: Path, epoch: int, state: dict) -> None:
    fit.model.save(directory, fit.tokenizer, fit.run_info | {"epoch": epoch})
    for name, opt in fit.optimizers.items():
        save_optimizer(opt, directory / f"optimizer-{name}.safetensors")
    for name, (module, tok, info) in fit.extras.items():
        (directory / name).mkdir()
        module.save(directory / name, tok, info)
    ckpt.write_json(directory / "trainer_state.json", state | {
        "schedulers": {k: s.state_dict() for k, s in fit.schedulers.items()},
    })


def _load_state(fit: Fit, directory: Path) -> dict:
    from training import model as model_lib

    loaded, _, _ = model_lib.load(directory)
    fit.model.load_state_dict(loaded.state_dict())
    for name, opt in fit.optimizers.items():
        load_optimizer(opt, directory / f"optimizer-{name}.safetensors")
    for name, (module, _, _) in fit.extras.items():
        other, _, _ = model_lib.load(directory / name)
        module.load_state_dict(other.state_dict())
    state = json.loads((directory / "trainer_state.json").read_text())
    for k, s in fit.schedulers.items():
        s.load_state_dict(state["schedulers"][k])
    return state


def run(fit: Fit) -> dict:
    """Train for ``args.epochs``; returns the final metrics (dev of the best epoch, and test)."""
    args = fit.args
    out = Path(args.out)
    log_path = out / ckpt.LOG_FILE
    state = {"epoch": 0, "global_step": 0, "best_f1": -1.0, "best_epoch": 0, "train_seconds": 0.0, "tokens": 0}
    for name in (ckpt.BEST, ckpt.LAST, *fit.extras):
        ckpt.recover(out / name)
    if args.resume and not (out / ckpt.LAST).exists() and (out / ckpt.BEST).exists():
        raise SystemExit(f"error: {out} has a best/ checkpoint but no last/ resume state; "
                         "use --overwrite to start again")
    if args.resume and (out / ckpt.LAST / "trainer_state.json").exists():
        state = _load_state(fit, out / ckpt.LAST)
        state.pop("schedulers", None)
        print(f"resuming {out} after epoch {state['epoch']} (best dev F1 {state['best_f1']:.4f})")
        if state["epoch"] >= args.epochs:
            print("all epochs already done")
    elif args.resume:
        print(f"nothing to resume in {out}; starting from scratch")

    device = torch.device(args.device)
    if state["epoch"] == 0:  # the starting point, for comparison
        dev = eval_lib.evaluate(fit.model, *fit.dev, batch_size=args.eval_batch_size, device=device)
        extra = (fit.on_epoch_end(0) or {}) if fit.on_epoch_end else {}
        ckpt.append_jsonl(log_path, {"epoch": 0, "dev_f1": dev["f1"], "dev_loss": dev["loss"], **extra})
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        torch.manual_seed(args.seed * 1000 + epoch)  # dropout: reproducible and resumable per epoch
        if fit.on_epoch_start:
            fit.on_epoch_start(epoch)
        fit.model.train()
        t0, tokens = time.perf_counter(), 0
        bar = tqdm(fit.train_batches(epoch), total=fit.steps_per_epoch, desc=f"epoch {epoch}/{args.epochs}",
                   dynamic_ncols=True, disable=None)
        sums: dict[str, float] = {}
        n = 0
        for batch in bar:
            logs = fit.step(_to(batch, device))
            n += 1
            state["global_step"] += 1
            tokens += int(logs["tokens"])
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if "loss" in logs and not math.isfinite(float(logs["loss"])):
                raise FloatingPointError(f"non-finite loss at step {state['global_step']}: {logs}")
            if state["global_step"] % args.log_every == 0:
                ckpt.append_jsonl(log_path, {"step": state["global_step"], "epoch": epoch,
                                             **{k: float(v) for k, v in logs.items()}})
            bar.set_postfix({k: f"{float(v):.3f}" for k, v in logs.items() if k != "tokens"})
        seconds = time.perf_counter() - t0
        state["train_seconds"] += seconds
        state["tokens"] += tokens
        dev = eval_lib.evaluate(fit.model, *fit.dev, batch_size=args.eval_batch_size, device=device)
        record = {
            "epoch": epoch,
            "dev_f1": dev["f1"], "dev_precision": dev["precision"], "dev_recall": dev["recall"],
            "dev_loss": dev["loss"],
            "train_seconds": round(seconds, 2), "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
            **{f"mean_{k}": v / max(n, 1) for k, v in sums.items() if k != "tokens"},
            **((fit.on_epoch_end(epoch) or {}) if fit.on_epoch_end else {}),
        }
        ckpt.append_jsonl(log_path, record)
        print(f"epoch {epoch}: dev F1 {dev['f1']:.4f} (P {dev['precision']:.4f} R {dev['recall']:.4f}), "
              f"{record['tokens_per_second']:.0f} tok/s")
        state["epoch"] = epoch
        if dev["f1"] > state["best_f1"]:
            state["best_f1"], state["best_epoch"] = dev["f1"], epoch
            with ckpt.atomic_dir(out / ckpt.BEST) as tmp:
                fit.model.save(tmp, fit.tokenizer, fit.run_info | {"epoch": epoch, "metrics": {"dev": dev}})
            for name, (module, tok, info) in fit.extras.items():
                with ckpt.atomic_dir(out / name) as tmp:
                    module.save(tmp, tok, info | {"epoch": epoch})
        with ckpt.atomic_dir(out / ckpt.LAST) as tmp:
            _save_state(fit, tmp, epoch, state)

    # final: reload the best checkpoint, evaluate dev and test once
    from training import model as model_lib

    best, _, info = model_lib.load(out)
    fit.model.load_state_dict(best.state_dict())
    dev = eval_lib.evaluate(fit.model, *fit.dev, batch_size=args.eval_batch_size, device=device)
    test = eval_lib.evaluate(fit.model, *fit.test, batch_size=args.eval_batch_size, device=device)
    summary = {
        "best_epoch": state["best_epoch"],
        "train_seconds": round(state["train_seconds"], 1),
        "tokens_per_second": round(state["tokens"] / max(state["train_seconds"], 1e-9), 1),
    }
    ckpt.update_metrics(out, "dev", dev)
    ckpt.update_metrics(out, "test", test)
    ckpt.write_json(ckpt.resolve(out) / ckpt.RUN_FILE, info | {"metrics": {"dev": dev, "test": test}, "train": summary})
    ckpt.append_jsonl(log_path, {"final": True, "dev_f1": dev["f1"], "test_f1": test["f1"], **summary})
    return {"dev": dev, "test": test, **summary}


def _to(batch, device):
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch


def args_dict(*dcs) -> dict:
    out = {}
    for dc in dcs:
        out.update(dataclasses.asdict(dc))
    return out


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
