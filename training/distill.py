"""Distil a BERT-CRF teacher into a smaller BERT-CRF student.

    python -m training.distill --method {none,topk,pos,struct,msd} [--teacher runs/teacher] [--out runs/student]

``none`` is the undistilled baseline (NLL only, same budget). ``msd`` is Meta-Structured
Distillation (:mod:`training.meta`): the teacher is updated by the meta-gradient of the student's
quiz loss; the updated teacher is saved beside the student (``RUN/teacher``).

Every method trains on the same sentences in the same order for a given seed: a fixed slice of
train (``--holdout-fraction``, default 10%) is held out of every method's training data and is
MSD's quiz data with ``--quiz-split holdout`` (the default, so dev stays clean for model
selection); ``--quiz-split dev`` uses the dev split as quiz data, the paper's literal choice.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import random
import sys
from dataclasses import dataclass, field

import torch

from training import checkpoint as ckpt
from training import config
from training import data as data_lib
from training import evaluate as eval_lib
from training import extra, layerwise, losses, meta, targetcache, trainer
from training import model as model_lib
from training.config import ConfigError, check_choice, check_min
from training.teacher import load_data

METHODS = ("none", "topk", "pos", "struct", "msd")
HOLDOUT_SEED = 17


@dataclass
class DistillArgs:
    method: str = field(default="msd", metadata={"help": "none | topk | pos | struct | msd"})
    teacher: str = field(default="runs/teacher", metadata={"help": "teacher run or checkpoint"})
    student_layers: int | None = field(default=None, metadata={"help": "student depth (default: half the teacher's)"})
    student_init: str | None = field(default=None, metadata={"help": "initialise the student from this pretrained encoder instead of the teacher"})
    alpha: float = field(default=0.5, metadata={"help": "loss = alpha * NLL + (1 - alpha) * KD"})
    temperature: float = 1.0
    topk: int = field(default=5, metadata={"help": "k of the Top-K KD loss"})
    kd_loss: str = field(default="pos", metadata={"help": "KD loss inside MSD: pos | struct"})
    pilot_lr: float = field(default=5e-5, metadata={"help": "MSD: lambda, the pilot SGD step size"})
    teacher_lr: float = field(default=2e-6, metadata={"help": "MSD: peak learning rate of the teacher's Adam (warm-up, linear decay to 0)"})
    teacher_grad_clip: float = 1.0
    pilot_params: str = field(default="all", metadata={"help": "MSD: student parameters moved by the pilot step: all | top (top layer + head + CRF) | head (classifier + CRF); cheaper choices cost less per step"})
    quiz_split: str = field(default="holdout", metadata={"help": "MSD quiz data: holdout (fixed slice of train) | dev"})
    quiz_batch_size: int | None = field(default=None, metadata={"help": "default: --batch-size"})
    holdout_fraction: float = 0.1
    meta_grad: str = field(default="factorised", metadata={"help": "MSD: factorised (exact, JVP through the student) | second-order"})
    meta_every: int = field(default=2, metadata={"help": "MSD: one teacher meta step every K student steps"})
    teacher_params: str = field(default="all", metadata={"help": "MSD: teacher parameters meta-updated: all | top | head (embeddings always frozen)"})
    teacher_anchor: str = field(default="nll", metadata={"help": "MSD: tie the teacher to its task: none | nll (its NLL on the batch) | kl (to the original's CRF) | l2 (to its original weights)"})
    teacher_anchor_weight: float = field(default=0.05, metadata={"help": "MSD: weight of --teacher-anchor in the teacher's objective"})
    teacher_max_drop: float = field(default=2.0, metadata={"help": "MSD: restore the best teacher when its dev F1 falls more than this many points below the original's"})
    teacher_on_drop: str = field(default="halve", metadata={"help": "MSD: after a restore, halve the teacher lr | stop the meta-updates"})

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_choice("quiz_split", self.quiz_split, ("holdout", "dev"))
        check_min("student_layers", self.student_layers, 1)
        check_min("topk", self.topk, 1)
        check_min("temperature", self.temperature, 0.0, strict=True)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"--holdout-fraction must be in [0, 1), got {self.holdout_fraction}")
        # MSD's own flags: values are checked whatever the method
        meta.MetaConfig(self.kd_loss, pilot_lr=self.pilot_lr,
                        pilot_params=self.pilot_params, meta_grad=self.meta_grad,
                        teacher_anchor=self.teacher_anchor, teacher_anchor_weight=self.teacher_anchor_weight)
        check_choice("teacher_params", self.teacher_params, meta.TEACHER_PARAMS)
        check_choice("teacher_on_drop", self.teacher_on_drop, meta.ON_DROP)
        check_min("teacher_lr", self.teacher_lr, 0.0)
        check_min("meta_every", self.meta_every, 1)
        check_min("teacher_max_drop", self.teacher_max_drop, 0.0)
        check_min("quiz_batch_size", self.quiz_batch_size, 1)


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, always ending with the top one (6 -> 3: [1, 3, 5])."""
    if not 1 <= student_layers <= teacher_layers:
        raise ConfigError(f"--student-layers must be in 1..{teacher_layers}, got {student_layers}")
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def shrink(model: model_lib.BertCrf, layers: list[int]) -> model_lib.BertCrf:
    """A copy of ``model`` that keeps embeddings, the listed encoder layers, head and CRF."""
    student = copy.deepcopy(model)
    base = student.encoder.base_model
    stack = getattr(getattr(base, "encoder", None), "layer", None)
    if stack is None:
        raise ConfigError(f"{type(base).__name__}: cannot find encoder.layer to select layers from; "
                         "use --student-init with a smaller pretrained encoder")
    base.encoder.layer = torch.nn.ModuleList([stack[i] for i in layers])
    student.encoder.config.num_hidden_layers = len(layers)
    return student


def align(enc_a, enc_b) -> None:
    """Keep, per sentence, the words that both tokenizations kept (KD is defined word by word)."""
    for a, b in zip(enc_a.items, enc_b.items):
        n = min(len(a["word_index"]), len(b["word_index"]))
        for item in (a, b):
            item["word_index"] = item["word_index"][:n]
            item["labels"] = item["labels"][:n]


def split_holdout(sentences: list, fraction: float) -> tuple[list, list]:
    """A fixed (seed-independent) slice of train held out of training: (train, holdout)."""
    idx = list(range(len(sentences)))
    random.Random(HOLDOUT_SEED).shuffle(idx)
    n = int(round(fraction * len(sentences)))
    hold = set(idx[:n])
    return [s for i, s in enumerate(sentences) if i not in hold], [s for i, s in enumerate(sentences) if i in hold]


def same_tokenization(a, b) -> bool:
    """Both fast tokenizers split text alike (their truncation / padding settings aside: encoding
    sets them, and a saved tokenizer keeps them)."""
    def spec(tok):
        d = json.loads(tok.backend_tokenizer.to_str())
        return {k: v for k, v in d.items() if k not in ("truncation", "padding")}
    return spec(a) == spec(b)


def paired_batches(enc_s, enc_t, batch_size, shuffle, seed, bucket=False):
    """Batches of the student's tokenization with the same sentences in the teacher's."""
    for b in data_lib.batches(enc_s, batch_size, shuffle=shuffle, seed=seed, bucket=bucket):
        idx = b.pop("index")
        bt = b if enc_t is enc_s else data_lib.collate([enc_t.items[i] for i in idx.tolist()], enc_t.pad_token_id)
        bt.pop("index", None)
        yield {"student": b, "teacher": bt, "labels": b["labels"]}


def build_student(dargs: DistillArgs, teacher: model_lib.BertCrf, teacher_tok):
    if dargs.student_init:
        student = model_lib.BertCrf.from_encoder(dargs.student_init, teacher.labels)
        tok = model_lib.load_tokenizer(dargs.student_init)
        src_layers = student.num_layers
    else:
        student, tok, src_layers = teacher, teacher_tok, teacher.num_layers
    n = dargs.student_layers or (max(1, teacher.num_layers // 2) if not dargs.student_init else src_layers)
    layers = layer_map(src_layers, n)
    student = shrink(student, layers)
    for p in student.parameters():
        p.requires_grad_(True)
    return student, tok, layers


def main(argv=None) -> dict:
    """``python -m training.distill``: the project's errors (a setting, a data file, a checkpoint) are
    one ``error:`` line on stderr and exit status 2."""
    try:
        return train_student(*config.parse_args(
            (DistillArgs, layerwise.LayerwiseArgs, trainer.TrainArgs, extra.ExtraArgs), argv,
            prog="python -m training.distill"))
    except config.ERRORS as e:
        print(config.error_line(e), file=sys.stderr)
        raise SystemExit(2) from None


def train_student(dargs: DistillArgs, largs: layerwise.LayerwiseArgs, targs: trainer.TrainArgs,
                  xargs: extra.ExtraArgs) -> dict:
    """Distil as the arguments say (see the module doc); returns the final metrics. Bad settings are
    refused (:class:`ConfigError`) before the run directory is touched."""
    extra.check(xargs, dargs.method, targs.epochs, targs.batch_size)
    if xargs.teacher_cache and largs.active:
        raise ConfigError("--teacher-cache holds the teacher's CRF targets only; the layer-wise terms need its "
                          "hidden states every step: drop --teacher-cache or the layer-wise weights")
    if targs.out == "runs/teacher":  # the TrainArgs default belongs to the teacher
        targs.out = "runs/student"
    kd_method = dargs.kd_loss if dargs.method == "msd" else dargs.method
    cfg = meta.MetaConfig(dargs.kd_loss, dargs.alpha, dargs.temperature, dargs.pilot_lr, dargs.teacher_grad_clip,
                          dargs.pilot_params, dargs.meta_grad, dargs.teacher_anchor,
                          dargs.teacher_anchor_weight) if dargs.method == "msd" else None
    trainer.set_threads(targs.threads)
    trainer.setup(targs)  # accelerate: processes, device, mixed precision
    if cfg and targs.mixed_precision == "fp16":
        raise ConfigError("--method msd: the teacher's meta-gradient is not loss-scaled; use --mixed-precision bf16")
    if cfg and trainer.world_size() > 1:  # the teacher's gradient is reduced, then clipped, by sync_optimizer
        cfg = dataclasses.replace(cfg, teacher_grad_clip=0.0)

    teacher, t_tok, t_info = model_lib.load(dargs.teacher, device=targs.device)
    if targs.dataset == "default" and t_info.get("dataset") not in (None, "default"):
        targs.dataset = t_info["args"]["dataset"]
        targs.data_dir = targs.data_dir or t_info["args"].get("data_dir")
    torch.manual_seed(targs.seed)
    # bad combinations (ConfigError) before the run directory is touched
    student, s_tok, layers = build_student(dargs, teacher, t_tok)
    same_tok = same_tokenization(s_tok, t_tok)
    matching, proj = layerwise.setup(largs, student, teacher, same_tok, layer_map) if largs.active else (None, None)
    student.to(targs.device)
    teacher.eval()
    teacher.requires_grad_(False)  # MSD: meta.MetaTeacher chooses the trained ones

    splits = load_data(targs, labels=teacher.labels)
    train, holdout = split_holdout(splits.train, dargs.holdout_fraction)
    quiz_sents = splits.dev if dargs.quiz_split == "dev" else holdout
    print(f"dataset {splits.name}: {len(train)} train sentences ({len(holdout)} held out), "
          f"{len(splits.dev)} dev, {len(splits.test)} test; student: layers {layers} of "
          f"{dargs.student_init or 'the teacher'}")

    label2id = {l: i for i, l in enumerate(teacher.labels)}

    def enc_pair(sents):
        es = data_lib.encode(sents, s_tok, label2id, max_length=targs.max_length)
        if same_tok:
            return es, es
        et = data_lib.encode(sents, t_tok, label2id, max_length=targs.max_length)
        align(es, et)
        return es, et

    pool = None
    if xargs.active:  # before the run directory is touched
        pool = extra.build(xargs, targs, splits, train, [s_tok, t_tok])
    out = trainer.prepare_run_dir(targs)
    last = out / ckpt.LAST
    if cfg and targs.resume and (last / "trainer_state.json").exists() and not (last / "teacher_best").is_dir():
        raise ConfigError(f"{out} was trained by an older MSD (no teacher-guard state in {last}); "
                          "use --overwrite to start it again")
    train_s, train_t = enc_pair(train)
    print(f"train: {data_lib.truncation_report(train_s)}")
    dev_s = data_lib.encode(splits.dev, s_tok, label2id, max_length=targs.max_length)
    test_s = data_lib.encode(splits.test, s_tok, label2id, max_length=targs.max_length)

    steps = (len(train_s.items) + targs.batch_size - 1) // targs.batch_size
    total_steps = steps * targs.epochs
    train_batches = lambda epoch: paired_batches(train_s, train_t, targs.batch_size, True,  # noqa: E731
                                                 targs.seed * 1000 + epoch, targs.bucket)
    if pool:
        extra_st = enc_pair(pool.sentences)
        print(f"extra: {data_lib.truncation_report(extra_st[0])}")
        train_batches, steps, total_steps = extra.plan(xargs, targs, (train_s, train_t), extra_st)
    cache = None
    if xargs.teacher_cache:
        cache = targetcache.TargetCache(xargs.teacher_cache, targetcache.teacher_digest(dargs.teacher), kd_method,
                                        dargs.topk, dargs.temperature)
        batches_of = train_batches
        train_batches = lambda epoch: cache.saving(batches_of(epoch))  # noqa: E731
        print(f"teacher targets: {len(cache.entries)} sentences cached in {cache.path}")
    opt = trainer.make_optimizer(student, targs.lr, targs.head_lr, targs.weight_decay)
    if proj is not None:  # trained beside the student, at the head's lr (they start random, like the head)
        proj.to(targs.device)
        layerwise.add_to_optimizer(opt, proj, targs.head_lr, targs.weight_decay)
    clipped = student if proj is None else torch.nn.ModuleList([student, proj])  # gradient clipping covers both
    sched = trainer.linear_warmup(opt, total_steps, targs.warmup_ratio)

    quiz, msd = {}, None
    if cfg:
        dev_t = dev_s if same_tok else data_lib.encode(splits.dev, t_tok, label2id, max_length=targs.max_length)
        msd = meta.MetaTeacher(
            teacher, cfg, lr=dargs.teacher_lr, total_steps=total_steps, warmup_ratio=targs.warmup_ratio,
            params=dargs.teacher_params, meta_every=dargs.meta_every, max_drop=dargs.teacher_max_drop,
            on_drop=dargs.teacher_on_drop, evaluate=lambda: eval_lib.evaluate(
                teacher, dev_t, splits.dev, targs.eval_batch_size, targs.device)["f1"])
        trainer.sync_optimizer(msd.optimizer, dargs.teacher_grad_clip)  # several processes: one teacher update
        quiz_s, quiz_t = enc_pair(quiz_sents)
        qbs = dargs.quiz_batch_size or targs.batch_size

        def new_quiz_stream(epoch):  # a function of (seed, epoch) only, so --resume is exact
            def cycle():
                for c in itertools.count():
                    yield from paired_batches(quiz_s, quiz_t, qbs, True, targs.seed * 1000 + epoch * 100 + c,
                                                targs.bucket)  # like the training batches: less padding
            quiz["it"] = cycle()

    def teacher_targets(t_batch, t_pot=None):
        if t_pot is None:
            with torch.no_grad():
                t_pot = teacher(t_batch)
        return losses.teacher_targets(kd_method, t_pot, dargs.temperature, k=dargs.topk)

    def step(batch):
        logs, s_pot = {}, None
        labelled = batch.pop("labelled", None)  # (B,) bool with extra text: the NLL sees only these
        if msd and msd.due(sched.last_epoch) and (labelled is None or bool(labelled.any())):
            q = trainer.local_batch(next(quiz["it"]))  # this process's rows of the quiz batch
            logs, s_pot = msd.step(student, extra.rows(batch, labelled), q)
            if labelled is not None:  # the pilot saw the labelled rows only: not this step's forward
                s_pot = None
        t_pot = None
        if largs.active or (kd_method != "none" and not cache):
            with torch.no_grad():
                t_pot = teacher(batch["teacher"], **largs.forward_flags())
        targets = None
        if kd_method != "none":
            targets = cache.targets(batch["teacher"], teacher_targets) if cache else teacher_targets(batch["teacher"], t_pot)
        if s_pot is None or largs.active:  # else: the meta step's pilot forward (same batch, same student), kept
            s_pot = student(batch["student"], **largs.forward_flags())
        loss, parts = extra.loss(kd_method, s_pot, batch["labels"], targets, dargs.alpha, dargs.temperature, labelled)
        if largs.active:  # on every row, labelled or extra
            lw, lw_parts = layerwise.loss(largs, s_pot, t_pot, batch, matching, proj)
            loss, parts = loss + lw, parts | lw_parts
        trainer.update(loss, clipped, opt, sched, targs.grad_clip)
        return logs | {"loss": loss.item(), **{k: v.item() for k, v in parts.items()},
                       "tokens": int(batch["student"]["attention_mask"].sum())}

    run_info = {
        "kind": "student",
        "method": dargs.method,
        "kd_loss": kd_method,
        "teacher": str(dargs.teacher),
        "teacher_layers": teacher.num_layers,
        "teacher_parameters": teacher.num_parameters(),
        "layer_map": layers,
        "student_init": dargs.student_init or "teacher",
        "quiz_split": dargs.quiz_split if cfg else None,
        "pilot_params": dargs.pilot_params if cfg else None,
        "meta_grad": dargs.meta_grad if cfg else None,
        "layerwise": {"teacher_layers": matching.teacher_layers, "word_level": matching.word_level,
                      "projections": proj is not None} if matching else None,
        "train_sentences": len(train),
        "holdout_sentences": len(holdout),
        "dataset": splits.name,
        "extra_text": pool.info if pool else None,
        "args": trainer.args_dict(dargs, largs, targs, xargs),
    }
    extras = {}
    if cfg:
        info = t_info | {"kind": "teacher", "meta_updated": True, "source": str(dargs.teacher)}
        extras["teacher"] = (teacher, t_tok, info)
        extras["teacher_best"] = (msd.best, t_tok, info | {"guard_best": True})  # the guard's best teacher so far
    fit = trainer.Fit(
        args=targs, model=student, tokenizer=s_tok, run_info=run_info,
        train_batches=train_batches, steps_per_epoch=steps, step=step,
        dev=(dev_s, splits.dev), test=(test_s, splits.test),
        optimizers={"model": opt} | ({"teacher": msd.optimizer} if msd else {}),
        schedulers={"model": sched} | ({"teacher": msd.scheduler, "teacher_guard": msd.guard} if msd else {}),
        extras=extras, on_epoch_start=new_quiz_stream if cfg else None,
        on_epoch_end=msd.guard.epoch_end if msd else None,
        states={"projections": proj} if proj is not None else {},
    )
    before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    result = trainer.run(fit)
    result["teacher_changed"] = any(not torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    if msd:  # the teacher's dev F1 before / after (the teacher saved beside the best student), restores, skips
        result["msd_teacher"] = summary = msd.guard.summary(result["best_epoch"])
        ckpt.update_metrics(out, "msd_teacher", summary)
        run_json = ckpt.resolve(out) / ckpt.RUN_FILE
        ckpt.write_json(run_json, ckpt.read_run(out) | {"msd_teacher": summary})
        print(f"teacher dev F1 {100 * summary['dev_f1_before']:.2f} -> {100 * summary['dev_f1_after']:.2f} "
              f"({summary['restores']} restores, {summary['skipped_steps']} skipped meta steps)")
    print(f"{dargs.method} student ({len(layers)} layers, {student.num_parameters() / 1e6:.1f}M params): "
          f"dev F1 {result['dev']['f1']:.4f}  test F1 {result['test']['f1']:.4f}  "
          f"{result['tokens_per_second']:.0f} tok/s")
    return result


if __name__ == "__main__":
    main()
