"""The training loop shared by teacher fine-tuning and distillation.

One loop: epochs over deterministic batches (order fixed by ``seed + epoch``), a caller-supplied
``step`` that does the backward pass and optimizer updates, tqdm progress, a JSONL log, dev F1
after every epoch, the best-on-dev checkpoint kept in ``RUN/best``, and the full resume state in
``RUN/last`` (model, optimizers, schedulers, extra modules such as MSD's teacher), both written
atomically. ``--resume`` restarts after the last finished epoch.

Several processes (``accelerate launch`` / ``torchrun``): data parallel through Hugging Face
``accelerate`` (:func:`setup`). Every process walks the same global batches (same order); each
takes its rows (:func:`shard`); after the backward pass the gradients are averaged across
processes weighted by each process's share of the global batch (:func:`reduce_gradients`), so N
processes make the same update as one process given the same global batch (up to float rounding),
uneven last batches included. The gradients are reduced explicitly, not by a DDP wrapper: the
callers' steps call model methods and ``torch.func.functional_call`` (MSD), which a DDP wrapper
would bypass. Dev/test predictions are gathered across processes; only the main process writes
checkpoints and logs. ``--mixed-precision bf16|fp16`` runs the steps under accelerate's autocast
(fp16 with gradient scaling); the CRF dynamic programs stay in float32 (:mod:`training.crf`).

Optimizer state is stored as safetensors (+ JSON for scalars), never pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from training import checkpoint as ckpt
from training import evaluate as eval_lib
from training.config import ConfigError, check_choice, check_min


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
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu) | cpu | cuda | cuda:N; "
                                                          "under accelerate launch / torchrun: auto | cpu | cuda"})
    mixed_precision: str | None = field(default=None, metadata={
        "help": "no | bf16 | fp16 (fp16: CUDA only, with gradient scaling); default: accelerate's setting, else no"})
    patience: int = field(default=0, metadata={"help": "stop after this many epochs without a dev F1 improvement (0: never)"})

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size", "max_length", "log_every", "threads",
                     "limit_train", "limit_eval"):
            check_min(name, getattr(self, name), 1)
        for name in ("lr", "head_lr", "weight_decay"):
            check_min(name, getattr(self, name), 0.0)
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"--warmup-ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.patience < 0:
            raise ConfigError(f"--patience must be >= 0 (0: no early stop), got {self.patience}")
        if self.mixed_precision is not None:
            check_choice("mixed_precision", self.mixed_precision, PRECISIONS)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ConfigError(f"--device: unknown device {self.device!r} (auto, cpu, cuda, cuda:N)") from None


PRECISIONS = ("no", "bf16", "fp16")


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
    """One optimizer update: backward, gradients averaged across processes (:func:`reduce_gradients`),
    clipping (``grad_clip <= 0``: none), step, schedule. fp16: scaled loss, unscaled before clipping."""
    optimizer.zero_grad(set_to_none=True)
    scaler = getattr(_DIST.accelerator, "scaler", None)
    with _no_autocast(loss.device.type):
        (scaler.scale(loss) if scaler is not None else loss).backward()
    reduce_gradients(model.parameters())
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)  # skipped (and the scale lowered) if a gradient is inf/nan
        scaler.update()
    else:
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


# ---------------------------------------------------------------------------------------------
# Several processes and mixed precision (accelerate)
# ---------------------------------------------------------------------------------------------

@dataclass
class _Dist:
    accelerator: object | None = None  # accelerate.Accelerator, made by setup()
    device: torch.device = torch.device("cpu")
    share: float = 1.0  # this process's rows / the rows of the current global batch


_DIST = _Dist()


def setup(args: TrainArgs):
    """Make the ``accelerate.Accelerator`` of this run and resolve ``args.device`` / ``args.mixed_precision``
    (in place, so the run's recorded arguments say what ran). Call it first: it joins the process group
    when launched by ``accelerate launch`` / ``torchrun`` (gloo on CPU, NCCL on GPUs).

    A plain ``python -m ...`` is one process: ``--device`` is used as given (``auto``: cuda if available).
    Under a launcher each process takes accelerate's device (``cuda:LOCAL_RANK``, or the CPU with
    ``--device cpu`` / ``accelerate launch --cpu`` / no GPU)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.device == "auto":
        cpu = not torch.cuda.is_available()
    else:
        kind = torch.device(args.device).type  # a valid device name: checked by TrainArgs
        if world > 1 and args.device not in ("cpu", "cuda"):
            raise ConfigError(f"--device {args.device}: with several processes use auto, cpu or cuda "
                              "(each process takes its own GPU)")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: CUDA is not available")
        cpu = kind == "cpu"
    AcceleratorState._reset_state()  # another run in this process may use another precision
    acc = Accelerator(mixed_precision=args.mixed_precision, cpu=cpu)
    device = acc.device if world > 1 or args.device == "auto" else torch.device(args.device)
    if acc.mixed_precision == "fp16" and device.type == "cpu":
        raise ConfigError("--mixed-precision fp16 needs a CUDA device; use bf16 on CPU")
    args.device, args.mixed_precision = str(device), acc.mixed_precision
    _DIST.accelerator, _DIST.device, _DIST.share = acc, device, 1.0
    return acc


def world_size() -> int:
    return _DIST.accelerator.num_processes if _DIST.accelerator is not None else 1


def is_main() -> bool:
    return _DIST.accelerator is None or _DIST.accelerator.is_main_process


def barrier() -> None:
    if world_size() > 1:
        _DIST.accelerator.wait_for_everyone()


def _rows(batch) -> int:
    if isinstance(batch, dict):
        return next(_rows(v) for v in batch.values() if isinstance(v, dict) or torch.is_tensor(v))
    return int(batch.shape[0])


def _take(batch, rows: torch.Tensor, memo: dict):
    if isinstance(batch, dict):
        if id(batch) not in memo:  # a sub-batch shared by two keys stays shared
            memo[id(batch)] = {k: _take(v, rows, memo) for k, v in batch.items()}
        return memo[id(batch)]
    return batch.index_select(0, rows) if torch.is_tensor(batch) else batch


def shard(batch: dict) -> tuple[dict, float]:
    """This process's rows of a global batch (rows ``rank, rank + N, ...``: similar lengths on every
    process) and its share of the batch (its rows / all rows). ``batch``: a dict of tensors of batch
    size B on dimension 0, or of such dicts. One process: the batch itself, share 1.0. A process that
    gets no row (B < N) gets row 0 with share 0.0: it runs the step, its gradient counts zero."""
    n, world = _rows(batch), world_size()
    if world == 1:
        return batch, 1.0
    rows = torch.arange(_DIST.accelerator.process_index, n, world)
    share = len(rows) / n
    if len(rows) == 0:
        rows = torch.zeros(1, dtype=torch.long)
    return _take(batch, rows, {}), share


def local_batch(batch: dict) -> dict:
    """This process's rows of a global batch (:func:`shard`), on the run's device: e.g. MSD's quiz batch."""
    return _to(shard(batch)[0], _DIST.device)


def reduce_gradients(params, share: float | None = None) -> None:
    """Make ``.grad`` the global-batch gradient on every process: the sum over processes of
    share * local gradient (the local gradient is the mean over the process's sentences, so this is
    the mean over the global batch whatever the split). ``share``: default the current step's
    (set by :func:`run`). A no-op on one process. Every process must call it with the same parameters
    holding gradients (a parameter without ``.grad`` is skipped)."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    w = _DIST.share if share is None else share
    grads = [p.grad for p in params if p.grad is not None]
    buckets: dict[tuple, list] = {}
    for g in grads:
        buckets.setdefault((g.dtype, g.device), []).append(g)
    for group in buckets.values():
        for i in range(0, len(group), 64):  # flat buffers of 64 tensors: few collectives, bounded memory
            part = group[i:i + 64]
            flat = torch.cat([g.reshape(-1) for g in part]).mul_(w)
            dist.all_reduce(flat)
            offset = 0
            for g in part:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()


def any_process(flag: bool) -> bool:
    """``flag`` or'ed over the processes: the same answer on every process, so that a decision taken
    on it (e.g. MSD skipping a non-finite teacher step, whose ``optimizer.step()`` runs a collective)
    is the same everywhere. A collective itself: every process must call it. ``flag`` on one process."""
    if world_size() == 1:
        return bool(flag)
    import torch.distributed as dist

    t = torch.tensor([float(bool(flag))], device=_DIST.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sync_optimizer(optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
    """For an optimizer whose gradients are made outside :func:`update` (MSD's teacher): on several
    processes, reduce its parameters' gradients (:func:`reduce_gradients`) and clip them
    (``grad_clip <= 0``: no clipping) just before each ``optimizer.step()``, so every process makes the
    same update, as for the student. The caller must then not clip those gradients itself (on the
    local gradients). A no-op on one process."""
    if world_size() == 1:
        return

    def before_step(opt, args, kwargs):
        params = [p for g in opt.param_groups for p in g["params"]]
        reduce_gradients(params)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)

    optimizer.register_step_pre_hook(before_step)


def _no_autocast(device_type: str):
    """Backward passes outside autocast (they follow the dtypes the forward chose)."""
    acc = _DIST.accelerator
    if acc is None or acc.mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def _autocast():
    acc = _DIST.accelerator
    return acc.autocast() if acc is not None and acc.mixed_precision != "no" else contextlib.nullcontext()


def _reduce_logs(logs: dict, share: float) -> dict:
    """The step's logged values for the global batch: share-weighted means, ``tokens`` summed."""
    if world_size() == 1:
        return logs
    import torch.distributed as dist

    keys = sorted(logs)
    v = torch.tensor([float(logs[k]) * (float(share > 0) if k == "tokens" else share) for k in keys],
                     dtype=torch.float64, device=_DIST.device)
    dist.all_reduce(v)
    return dict(zip(keys, v.tolist()))


def _broadcast(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers to every process (they start equal; this makes sure)."""
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, 0)


def prepare_run_dir(args: TrainArgs) -> Path:
    """Refuse to clobber a finished or partial run unless --resume or --overwrite.
    Several processes: all check, then the main process alone replaces/creates the directory."""
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (args.resume or args.overwrite):
        raise ConfigError(f"{out} already exists. Use --resume to continue it, --overwrite to replace it, "
                          f"or --out to choose another directory.")
    barrier()
    if is_main():
        if out.exists() and args.overwrite and not args.resume:
            import shutil

            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    barrier()
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
    # name -> module trained beside the model but not part of it (e.g. layer-wise projections):
    # NAME.safetensors in best/ and last/, restored from last/ on --resume; never exported
    states: dict = field(default_factory=dict)


def _save_states(fit: Fit, directory: Path) -> None:
    for name, module in fit.states.items():
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                  str(directory / f"{name}.safetensors"))


def _save_state(fit: Fit, directory: Path, epoch: int, state: dict) -> None:
    fit.model.save(directory, fit.tokenizer, fit.run_info | {"epoch": epoch})
    _save_states(fit, directory)
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
    for name, module in fit.states.items():
        module.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
    state = json.loads((directory / "trainer_state.json").read_text())
    for k, s in fit.schedulers.items():
        s.load_state_dict(state["schedulers"][k])
    return state


def run(fit: Fit) -> dict:
    """Train for ``args.epochs``; returns the final metrics (dev of the best epoch, and test).
    Several processes: every process calls it; the returned metrics are the same on all."""
    args = fit.args
    if _DIST.accelerator is None:
        setup(args)
    main, world, device = is_main(), world_size(), _DIST.device
    out = Path(args.out)
    log_path = out / ckpt.LOG_FILE
    state = {"epoch": 0, "global_step": 0, "best_f1": -1.0, "best_epoch": 0, "train_seconds": 0.0, "tokens": 0}
    if main:
        for name in (ckpt.BEST, ckpt.LAST, *fit.extras):
            ckpt.recover(out / name)
    barrier()
    if args.resume and not (out / ckpt.LAST).exists() and (out / ckpt.BEST).exists():
        raise ConfigError(f"{out} has a best/ checkpoint but no last/ resume state; "
                          "use --overwrite to start again")
    say = print if main else (lambda *a, **k: None)
    if args.resume and (out / ckpt.LAST / "trainer_state.json").exists():
        state = _load_state(fit, out / ckpt.LAST)  # the state is global: resumable by any number of processes
        state.pop("schedulers", None)
        say(f"resuming {out} after epoch {state['epoch']} (best dev F1 {state['best_f1']:.4f})")
        if state["epoch"] >= args.epochs:
            say("all epochs already done")
        elif state.get("stopped_early"):
            say(f"stopped early after epoch {state['epoch']} (patience {state['patience']}); not training again")
    elif args.resume:
        say(f"nothing to resume in {out}; starting from scratch")
    if world > 1:
        for module in [fit.model, *(m for m, _, _ in fit.extras.values()), *fit.states.values()]:
            _broadcast(module)

    def evaluate(split):
        with _autocast():
            return eval_lib.evaluate(fit.model, *split, batch_size=args.eval_batch_size, device=device,
                                     distributed=True)

    if state["epoch"] == 0:  # the starting point, for comparison
        dev = evaluate(fit.dev)
        extra = (fit.on_epoch_end(0) or {}) if fit.on_epoch_end else {}
        if main:
            ckpt.append_jsonl(log_path, {"epoch": 0, "dev_f1": dev["f1"], "dev_loss": dev["loss"], **extra})
    for epoch in range(state["epoch"] + 1, (state["epoch"] if state.get("stopped_early") else args.epochs) + 1):
        # dropout: reproducible and resumable per epoch (and different on every process)
        torch.manual_seed(args.seed * 1000 + epoch + 7919 * _DIST.accelerator.process_index)
        if fit.on_epoch_start:
            fit.on_epoch_start(epoch)
        fit.model.train()
        t0, tokens = time.perf_counter(), 0
        bar = tqdm(fit.train_batches(epoch), total=fit.steps_per_epoch, desc=f"epoch {epoch}/{args.epochs}",
                   dynamic_ncols=True, disable=None if main else True)
        sums: dict[str, float] = {}
        n = 0
        for batch in bar:
            batch, _DIST.share = shard(batch)
            with _autocast():
                logs = fit.step(_to(batch, device))
            logs = _reduce_logs(logs, _DIST.share)
            n += 1
            state["global_step"] += 1
            tokens += int(logs["tokens"])
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if "loss" in logs and not math.isfinite(float(logs["loss"])):
                raise FloatingPointError(f"non-finite loss at step {state['global_step']}: {logs}")
            if main and state["global_step"] % args.log_every == 0:
                ckpt.append_jsonl(log_path, {"step": state["global_step"], "epoch": epoch,
                                             **{k: float(v) for k, v in logs.items()}})
            bar.set_postfix({k: f"{float(v):.3f}" for k, v in logs.items() if k != "tokens"})
        seconds = time.perf_counter() - t0
        state["train_seconds"] += seconds
        state["tokens"] += tokens
        dev = evaluate(fit.dev)
        record = {
            "epoch": epoch,
            "dev_f1": dev["f1"], "dev_precision": dev["precision"], "dev_recall": dev["recall"],
            "dev_loss": dev["loss"],
            "train_seconds": round(seconds, 2), "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
            **{f"mean_{k}": v / max(n, 1) for k, v in sums.items() if k != "tokens"},
            **({"processes": world} if world > 1 else {}),
            **((fit.on_epoch_end(epoch) or {}) if fit.on_epoch_end else {}),
        }
        state["epoch"] = epoch
        better = dev["f1"] > state["best_f1"]
        if better:
            state["best_f1"], state["best_epoch"] = dev["f1"], epoch
        stop = bool(args.patience) and epoch - state["best_epoch"] >= args.patience and epoch < args.epochs
        if stop:  # dev F1 is the same on every process, so every process stops here
            state["stopped_early"], state["patience"] = True, args.patience
        if main:
            ckpt.append_jsonl(log_path, record)
            print(f"epoch {epoch}: dev F1 {dev['f1']:.4f} (P {dev['precision']:.4f} R {dev['recall']:.4f}), "
                  f"{record['tokens_per_second']:.0f} tok/s")
            if better:
                with ckpt.atomic_dir(out / ckpt.BEST) as tmp:
                    fit.model.save(tmp, fit.tokenizer, fit.run_info | {"epoch": epoch, "metrics": {"dev": dev}})
                    _save_states(fit, tmp)
                for name, (module, tok, info) in fit.extras.items():
                    with ckpt.atomic_dir(out / name) as tmp:
                        module.save(tmp, tok, info | {"epoch": epoch})
            if stop:
                print(f"early stop: no dev F1 improvement for {args.patience} epoch(s) (best: epoch {state['best_epoch']})")
                ckpt.append_jsonl(log_path, {"early_stop": True, "epoch": epoch, "best_epoch": state["best_epoch"],
                                             "patience": args.patience})
            with ckpt.atomic_dir(out / ckpt.LAST) as tmp:
                _save_state(fit, tmp, epoch, state)
        barrier()  # every process goes on once the epoch's checkpoints are written
        if state.get("stopped_early"):
            break

    # final: reload the best checkpoint, evaluate dev and test once
    from training import model as model_lib

    best, _, info = model_lib.load(out)
    fit.model.load_state_dict(best.state_dict())
    dev = evaluate(fit.dev)
    test = evaluate(fit.test)
    summary = {
        "best_epoch": state["best_epoch"],
        "epochs_trained": state["epoch"],
        "stopped_early": bool(state.get("stopped_early")),
        "train_seconds": round(state["train_seconds"], 1),
        "tokens_per_second": round(state["tokens"] / max(state["train_seconds"], 1e-9), 1),
    }
    if main:
        ckpt.update_metrics(out, "dev", dev)
        ckpt.update_metrics(out, "test", test)
        ckpt.write_json(ckpt.resolve(out) / ckpt.RUN_FILE, info | {"metrics": {"dev": dev, "test": test}, "train": summary})
        ckpt.append_jsonl(log_path, {"final": True, "dev_f1": dev["f1"], "test_f1": test["f1"], **summary})
    barrier()
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
