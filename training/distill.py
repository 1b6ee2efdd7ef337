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
import itertools
import random
import sys
from dataclasses import dataclass, field

import torch

from training import data as data_lib
from training import extra, losses, meta, targetcache, trainer
from training import model as model_lib
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
    teacher_lr: float = field(default=2e-5, metadata={"help": "MSD: learning rate of the teacher's Adam"})
    teacher_grad_clip: float = 1.0
    pilot_params: str = field(default="all", metadata={"help": "MSD: student parameters moved by the pilot step: all | top (top layer + head + CRF) | head (classifier + CRF); cheaper choices cost less per step"})
    quiz_split: str = field(default="holdout", metadata={"help": "MSD quiz data: holdout (fixed slice of train) | dev"})
    quiz_batch_size: int | None = field(default=None, metadata={"help": "default: --batch-size"})
    holdout_fraction: float = 0.1


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, always ending with the top one (6 -> 3: [1, 3, 5])."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"--student-layers must be in 1..{teacher_layers}, got {student_layers}")
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def shrink(model: model_lib.BertCrf, layers: list[int]) -> model_lib.BertCrf:
    """A copy of ``model`` that keeps embeddings, the listed encoder layers, head and CRF."""
    student = copy.deepcopy(model)
    base = student.encoder.base_model
    stack = getattr(getattr(base, "encoder", None), "layer", None)
    if stack is None:
        raise ValueError(f"{type(base).__name__}: cannot find encoder.layer to select layers from; "
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


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None) -> dict:
    try:
        dargs, targs, xargs = trainer.parse_args((DistillArgs, trainer.TrainArgs, extra.ExtraArgs), argv)
        extra.check(xargs, dargs.method, targs.epochs, targs.batch_size)
    except ValueError as e:
        _fail(str(e))
    if dargs.method not in METHODS:
        raise SystemExit(f"error: --method must be one of {METHODS}, got {dargs.method!r}")
    if dargs.quiz_split not in ("holdout", "dev"):
        raise SystemExit("error: --quiz-split must be holdout or dev")
    if targs.out == "runs/teacher":  # the TrainArgs default belongs to the teacher
        targs.out = "runs/student"
    kd_method = dargs.kd_loss if dargs.method == "msd" else dargs.method
    cfg = meta.MetaConfig(dargs.kd_loss, dargs.alpha, dargs.temperature, dargs.pilot_lr,
                          dargs.teacher_grad_clip, dargs.pilot_params) if dargs.method == "msd" else None
    trainer.set_threads(targs.threads)

    teacher, t_tok, t_info = model_lib.load(dargs.teacher, device=targs.device)
    if targs.dataset == "default" and t_info.get("dataset") not in (None, "default"):
        targs.dataset = t_info["args"]["dataset"]
        targs.data_dir = targs.data_dir or t_info["args"].get("data_dir")
    torch.manual_seed(targs.seed)
    student, s_tok, layers = build_student(dargs, teacher, t_tok)
    student.to(targs.device)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(dargs.method == "msd")

    splits = load_data(targs, labels=teacher.labels)
    train, holdout = split_holdout(splits.train, dargs.holdout_fraction)
    quiz_sents = splits.dev if dargs.quiz_split == "dev" else holdout
    print(f"dataset {splits.name}: {len(train)} train sentences ({len(holdout)} held out), "
          f"{len(splits.dev)} dev, {len(splits.test)} test; student: layers {layers} of "
          f"{dargs.student_init or 'the teacher'}")

    label2id = {l: i for i, l in enumerate(teacher.labels)}
    same_tok = s_tok.backend_tokenizer.to_str() == t_tok.backend_tokenizer.to_str()

    def enc_pair(sents):
        es = data_lib.encode(sents, s_tok, label2id, max_length=targs.max_length)
        if same_tok:
            return es, es
        et = data_lib.encode(sents, t_tok, label2id, max_length=targs.max_length)
        align(es, et)
        return es, et

    pool = None
    if xargs.active:  # before the run directory is touched
        try:
            pool = extra.build(xargs, targs, splits, train, [s_tok, t_tok])
        except data_lib.DataError as e:
            _fail(str(e))
    trainer.prepare_run_dir(targs)
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
    sched = trainer.linear_warmup(opt, total_steps, targs.warmup_ratio)
    t_opt = trainer.adam(list(teacher.parameters()), lr=dargs.teacher_lr) if cfg else None

    quiz = {}
    if cfg:
        quiz_s, quiz_t = enc_pair(quiz_sents)
        qbs = dargs.quiz_batch_size or targs.batch_size

        def new_quiz_stream(epoch):  # a function of (seed, epoch) only, so --resume is exact
            def cycle():
                for c in itertools.count():
                    yield from paired_batches(quiz_s, quiz_t, qbs, True, targs.seed * 1000 + epoch * 100 + c)
            quiz["it"] = cycle()

    def teacher_targets(t_batch):
        with torch.no_grad():
            t_pot = teacher(t_batch)
        return losses.teacher_targets(kd_method, t_pot, dargs.temperature, k=dargs.topk)

    def step(batch):
        logs = {}
        labelled = batch.pop("labelled", None)  # (B,) bool with extra text: the NLL sees only these
        if cfg and (labelled is None or bool(labelled.any())):
            q = trainer._to(next(quiz["it"]), targs.device)
            logs |= meta.teacher_step(student, teacher, t_opt, extra.rows(batch, labelled), q, cfg)
        targets = None
        if kd_method != "none":
            targets = cache.targets(batch["teacher"], teacher_targets) if cache else teacher_targets(batch["teacher"])
        loss, parts = extra.loss(kd_method, student(batch["student"]), batch["labels"], targets,
                                 dargs.alpha, dargs.temperature, labelled)
        trainer.update(loss, student, opt, sched, targs.grad_clip)
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
        "train_sentences": len(train),
        "holdout_sentences": len(holdout),
        "dataset": splits.name,
        "extra_text": pool.info if pool else None,
        "args": trainer.args_dict(dargs, targs, xargs),
    }
    extras = {}
    if cfg:
        extras["teacher"] = (teacher, t_tok, t_info | {"kind": "teacher", "meta_updated": True,
                                                       "source": str(dargs.teacher)})
    fit = trainer.Fit(
        args=targs, model=student, tokenizer=s_tok, run_info=run_info,
        train_batches=train_batches, steps_per_epoch=steps, step=step,
        dev=(dev_s, splits.dev), test=(test_s, splits.test),
        optimizers={"model": opt} | ({"teacher": t_opt} if t_opt else {}),
        schedulers={"model": sched}, extras=extras,
        on_epoch_start=new_quiz_stream if cfg else None,
    )
    before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    result = trainer.run(fit)
    result["teacher_changed"] = any(not torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    print(f"{dargs.method} student ({len(layers)} layers, {student.num_parameters() / 1e6:.1f}M params): "
          f"dev F1 {result['dev']['f1']:.4f}  test F1 {result['test']['f1']:.4f}  "
          f"{result['tokens_per_second']:.0f} tok/s")
    return result


if __name__ == "__main__":
    main()
