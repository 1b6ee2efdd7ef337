"""Distillation on extra text (training/extra.py): sources and their formats, the dev/test overlap
check, augmentation, batch composition, the loss on extra sentences, exact resume, bad input."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForTokenClassification

from training import corpora
from training import data as data_lib
from training import distill, extra, losses, targetcache, teacher
from training.corpora import DataError, Sentence
from training.model import BertCrf, load_tokenizer

from conftest import SHARED_DATA, kill_during_epoch, make_tiny_encoder, toy_sentences, write_conll


# ---------------------------------------------------------------- sources and formats
def test_each_file_format_is_read(tmp_path):
    text = tmp_path / "raw.txt"
    text.write_text("Merkel's U.S.-visit.\n\n  anna lives in oslo  \n")
    sents, fmt = extra.read_file(text)
    assert fmt == "text"
    assert [s.words for s in sents] == [["Merkel", "'", "s", "U", ".", "S", ".", "-", "visit", "."],
                                        ["anna", "lives", "in", "oslo"]]
    assert all(s.tags == ["O"] * len(s.words) for s in sents)

    conll = tmp_path / "four.conll"  # CoNLL-2003 style: -DOCSTART-, 4 columns, tags ignored
    conll.write_text("-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\n\nPeter NNP I-NP I-PER\n")
    sents, fmt = extra.read_file(conll)
    assert fmt == "conll" and [s.words for s in sents] == [["EU", "rejects"], ["Peter"]]
    assert all(t == "O" for s in sents for t in s.tags)

    tagged = tmp_path / "two.txt"  # token + tag, no -DOCSTART- (e.g. WikiANN-like, tags of another task)
    tagged.write_text("Paris\tB-LOC\nis\tO\n\nnice\tO\n")
    assert [s.words for s in extra.read_file(tagged)[0]] == [["Paris", "is"], ["nice"]]

    one = tmp_path / "one.txt"  # an unlabelled CoNLL file: one column, blank lines between sentences
    one.write_text("anna\nlives\n\nbob\n")
    sents, fmt = extra.read_file(one)
    assert fmt == "conll" and [s.words for s in sents] == [["anna", "lives"], ["bob"]]


@pytest.mark.parametrize("content,match", [
    (b"", "empty file"), (b"\n  \n", "empty file"),
    (b'{"text": "anna lives in oslo"}\n', "JSON"),
    (b"anna\x00bob\n", "binary"),
    (b"anna O\nbob B-PER\ncarla I-PER\nthe cat sat on the mat\n", r":4: 3 of 4 lines look like CoNLL"),
    (b"anna lives\n\xff\xfe in oslo\n", r":2: not UTF-8"),
])
def test_bad_files_are_refused_with_their_name(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as e:
        extra.read_source(str(path))
    assert str(path) in str(e.value)


def _fake_data_dir(tmp_path):
    d = tmp_path / "data"
    (d / "conll2000").mkdir(parents=True)
    write_conll(d / "conll2000" / "train.txt", toy_sentences(20, 7))
    write_conll(d / "conll2000" / "test.txt", toy_sentences(5, 8))
    (d / "wikiann_en").mkdir()
    for split, n in (("train", 6), ("valid", 3), ("test", 3)):
        (d / "wikiann_en" / f"{split}.txt").write_text("\n\n".join(
            "\n".join(f"en:{w}\t{t}" for w, t in zip(ws, ts)) for ws, ts in toy_sentences(n, 9)) + "\n")
    return d


def test_named_datasets_are_read_with_their_loaders_and_tags_dropped(tmp_path):
    d = _fake_data_dir(tmp_path)
    sents, name = extra.read_source("conll2000", d)
    assert name == "conll2000:train" and len(sents) == 18  # the loader's dev = last 10% of train.txt
    assert [s.words for s in sents] == [w for w, _ in toy_sentences(20, 7)[:18]]
    assert all(set(s.tags) == {"O"} for s in sents)
    sents, name = extra.read_source("conll2000:test", d)
    assert name == "conll2000:test" and len(sents) == 5
    sents, _ = extra.read_source("wikiann", d)  # the loader strips the en: prefixes
    assert [s.words for s in sents] == [w for w, _ in toy_sentences(6, 9)]
    with pytest.raises(DataError, match="unknown split 'nope'"):
        extra.read_source("wikiann:nope", d)
    with pytest.raises(DataError, match="no such file, and not a dataset name"):
        extra.read_source("conll2099", d)
    with pytest.raises(DataError, match="no conll2003 train.txt"):
        extra.read_source("conll2003", d)


@pytest.mark.skipif(not (SHARED_DATA / "conll2000").is_dir(), reason="needs ../shared/data")
def test_the_conll2003_pool_loads_from_shared_data():
    sents, name = extra.read_source("conll2000", SHARED_DATA)
    assert name == "conll2000:train" and len(sents) == 8042
    sents, name = extra.read_source("wikiann", SHARED_DATA)
    assert name == "wikiann:train" and len(sents) == 20000 and not sents[0].words[0].startswith("en:")


# ---------------------------------------------------------------- the dev/test check
def _splits(train, dev, test, name="toy"):
    return corpora.DatasetSplits(name, train, dev, test, ["O"], "test")


def test_dev_and_test_sentences_are_dropped_and_counted(tmp_path, capsys):
    dev = [Sentence(["U.S.", "troops", "left"], ["O"] * 3), Sentence(["anna", "sings"], ["O", "O"])]
    test = [Sentence(["bob", "runs"], ["O", "O"])]
    train = [Sentence(["carla", "reads"], ["O", "O"])]
    pool = tmp_path / "pool.txt"  # raw text: "U.S." is split differently from the CoNLL token, still matched
    pool.write_text("U.S. troops left\nanna sings\nanna sings loudly\nbob runs\nbob runs\ncarla reads\nAnna sings\n")
    xargs = extra.ExtraArgs(unlabeled=str(pool))
    targs = SimpleNamespace(data_dir=None, seed=0, limit_eval=None, batch_size=16, dataset="toy")
    got = extra.build(xargs, targs, _splits(train, dev, test), train, [])
    assert [s.words for s in got.sentences] == [["anna", "sings", "loudly"], ["carla", "reads"], ["Anna", "sings"]]
    assert got.info["dropped_dev_test"] == 4 and got.info["sentences"] == 3  # train duplicates are kept
    assert got.info["sources"] == {f"{pool} (text)": 7} and got.info["batch"] == [8, 8]
    assert "4 dropped (in dev or test of toy)" in capsys.readouterr().out


def test_the_check_uses_full_dev_and_test_under_limit_eval(tmp_path):
    d = _fake_data_dir(tmp_path)
    full = corpora.load_dataset("conll2000", data_dir=d)
    limited = _splits(full.train, full.dev[:1], full.test[:1], "conll2000")
    pool = tmp_path / "pool.conll"
    write_conll(pool, [(s.words, s.tags) for s in full.test])
    targs = SimpleNamespace(data_dir=d, seed=0, limit_eval=1, batch_size=4, dataset="conll2000")
    with pytest.raises(DataError, match="no extra sentence left"):
        extra.build(extra.ExtraArgs(unlabeled=str(pool)), targs, limited, full.train, [])


# ---------------------------------------------------------------- augmentation
TRAIN = [Sentence(w, t) for w, t in toy_sentences(40, 4)]


def test_mention_swap_swaps_one_mention_for_another_of_its_type():
    from serving.engine import tags_to_spans

    mentions = {}
    for s in TRAIN:
        for a, b, typ in tags_to_spans(s.tags):
            mentions.setdefault(typ, set()).add(tuple(s.words[a:b]))
    out = extra.mention_swap(TRAIN, 2, seed=3)
    assert len(out) == 2 * len(TRAIN)  # every toy sentence has a mention, every type several
    for k, new in enumerate(out):
        old = TRAIN[k // 2]
        o_spans, n_spans = tags_to_spans(old.tags), tags_to_spans(new.tags)
        assert len(new.words) == len(new.tags) and corpora.iob1_to_iob2(new.tags) == new.tags
        assert [t for *_, t in o_spans] == [t for *_, t in n_spans]  # same types, same order
        changed = [(o, n) for o, n in zip(o_spans, n_spans) if old.words[o[0]:o[1]] != new.words[n[0]:n[1]]]
        assert len(changed) == 1
        (oa, ob, typ), (na, nb, _) = changed[0]
        assert tuple(new.words[na:nb]) in mentions[typ] and new.tags[na:nb] == [f"B-{typ}"] + [f"I-{typ}"] * (nb - na - 1)
        assert new.words[:na] == old.words[:oa] and new.words[nb:] == old.words[ob:]
        assert new.tags[:na] == old.tags[:oa] and new.tags[nb:] == old.tags[ob:]
    assert [s.words for s in extra.mention_swap(TRAIN, 2, seed=3)] == [s.words for s in out]  # per seed
    assert [s.words for s in extra.mention_swap(TRAIN, 2, seed=4)] != [s.words for s in out]
    lonely = [Sentence(["anna", "sings"], ["B-PER", "O"]), Sentence(["la", "la"], ["O", "O"])]
    assert extra.mention_swap(lonely, 3, seed=0) == []  # no other PER mention, no mention at all


def test_mask_uses_the_mask_id():
    tok = load_tokenizer("default")
    mask = extra.mask_token([tok, copy.deepcopy(tok)])
    assert mask == "[MASK]"
    out = extra.mask_words(TRAIN, 3, 0.15, mask, seed=1)
    assert len(out) == 3 * len(TRAIN)
    n_masked = n_words = 0
    for k, new in enumerate(out):
        old = TRAIN[k // 3]
        assert new.tags == old.tags and mask in new.words
        assert all(w == o for w, o in zip(new.words, old.words) if w != mask)
        n_masked, n_words = n_masked + new.words.count(mask), n_words + len(new.words)
    assert 0.12 < n_masked / n_words < 0.3  # 0.15, plus at least one per sentence
    enc = data_lib.encode(out, tok, None)
    for s, item in zip(out, enc.items):
        ids = [item["input_ids"][p] for p in item["word_index"]]
        assert [i == tok.mask_token_id for i in ids] == [w == mask for w in s.words]
        assert item["input_ids"].count(tok.mask_token_id) == s.words.count(mask)  # one piece per mask
    assert extra.mask_words(TRAIN, 3, 0.15, mask, seed=1) == out
    other = copy.deepcopy(tok)
    other.mask_token = "<mask>"
    with pytest.raises(DataError, match="one mask token"):
        extra.mask_token([tok, other])


# ---------------------------------------------------------------- batches
def _encoded(n, seed, tok):
    return data_lib.encode([Sentence(w, t) for w, t in toy_sentences(n, seed)], tok,
                           {l: i for i, l in enumerate(["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"])})


def test_split_sizes():
    assert extra.split_sizes(16, 0.5) == (8, 8)
    assert extra.split_sizes(16, 0.25) == (12, 4)
    assert extra.split_sizes(16, 0.001) == (15, 1) and extra.split_sizes(16, 0.999) == (1, 15)


@pytest.mark.parametrize("bucket", [False, True])
def test_batch_composition_and_determinism(bucket):
    tok = load_tokenizer("default")
    lab, ext = _encoded(23, 1, tok), _encoded(7, 2, tok)
    key = lambda ids, am: tuple(i for i, m in zip(ids.tolist(), am.tolist()) if m)  # noqa: E731
    lab_keys = sorted(tuple(it["input_ids"]) for it in lab.items)
    ext_keys = {tuple(it["input_ids"]) for it in ext.items}

    def run(seed):
        return list(extra.mixed_batches((lab, lab), (ext, ext), 5, 3, seed, bucket))

    batches = run(1001)
    assert len(batches) == 5  # one pass over the 23 labelled sentences, 5 at a time
    seen_lab, seen_ext = [], []
    for b in batches:
        s = b["student"]
        rows = [key(i, m) for i, m in zip(s["input_ids"], s["attention_mask"])]
        assert b["labelled"].tolist() == [True] * (len(rows) - 3) + [False] * 3
        seen_lab += rows[:-3]
        seen_ext += rows[-3:]
        assert b["teacher"] is s and torch.equal(b["labels"], s["labels"])
    assert sorted(seen_lab) == lab_keys  # every labelled sentence once
    assert set(seen_ext) <= ext_keys and len(set(seen_ext)) == len(ext_keys)  # the extra stream cycles
    again = run(1001)
    for a, b in zip(batches, again):
        assert all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"])
    other = run(1002)  # another epoch: another order
    assert any(not torch.equal(a["student"]["input_ids"], b["student"]["input_ids"]) for a, b in zip(batches, other))
    stage1 = list(extra.extra_batches((ext, ext), 4, 1001, bucket))
    assert sorted(len(b["labelled"]) for b in stage1) == [3, 4] and not any(b["labelled"].any() for b in stage1)


# ---------------------------------------------------------------- the loss on extra sentences
def _tiny_bertcrf(seed):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     classifier_dropout=0.0, num_labels=3, id2label={0: "O", 1: "B-X", 2: "I-X"},
                     label2id={"O": 0, "B-X": 1, "I-X": 2})
    m = BertCrf(BertForTokenClassification(cfg)).double().eval()
    with torch.no_grad():
        for p in m.crf.parameters():
            p.normal_()
    return m


def _batch(B=4, S=6):
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([6, 4, 5, 3])[:B]
    am = (torch.arange(S)[None] < lengths[:, None]).long()
    n = lengths - 2  # words: sub-tokens 1 .. length-2
    N = int(n.max())
    wm = torch.arange(N)[None] < n[:, None]
    b = {"input_ids": torch.randint(1, 50, (B, S), generator=g) * am, "attention_mask": am,
         "token_type_ids": torch.zeros(B, S, dtype=torch.long), "word_index": (torch.arange(N)[None] + 1) * wm,
         "word_mask": wm}
    return b, torch.randint(0, 3, (B, N), generator=g) * wm


@pytest.mark.parametrize("method", ["topk", "pos", "struct"])
def test_extra_sentences_get_kd_only(method):
    t, s = _tiny_bertcrf(0), _tiny_bertcrf(1)
    b, tags = _batch()
    targets = losses.teacher_targets(method, t(b), k=3)
    pot = s(b)
    kd = losses.kd_loss(method, pot, targets)
    alpha = 0.3
    lab = torch.tensor([True, True, False, False])
    loss, parts = extra.loss(method, pot, tags, targets, alpha, 1.0, lab)
    sub = {k: v[:2] for k, v in b.items()}
    nll_lab = losses.nll(s(sub), tags[:2])
    assert loss.item() == pytest.approx(alpha * nll_lab.item() + (1 - alpha) * kd.item(), rel=1e-12)
    assert parts["nll"].item() == pytest.approx(nll_lab.item(), rel=1e-12)
    other = tags.clone()
    other[2:] = (other[2:] + 1) % 3 * b["word_mask"][2:]  # the tags of extra sentences play no part
    assert extra.loss(method, pot, other, targets, alpha, 1.0, lab)[0].item() == loss.item()
    # a batch of extra sentences only (stage 1): KD alone, weight 1
    none = torch.zeros(4, dtype=torch.bool)
    only, parts = extra.loss(method, pot, tags, targets, alpha, 1.0, none)
    assert only.item() == kd.item() and set(parts) == {"kd"}
    # all labelled / no mask: exactly today's loss
    ref, _ = losses.distill_loss(method, pot, tags, targets, alpha)
    assert extra.loss(method, pot, tags, targets, alpha, 1.0, None)[0].item() == ref.item()
    assert extra.loss(method, pot, tags, targets, alpha, 1.0, torch.ones(4, dtype=torch.bool))[0].item() == \
        pytest.approx(ref.item(), rel=1e-12)
    sub_batch = extra.rows({"student": b, "teacher": b, "labels": tags}, lab)  # MSD's pilot batch
    assert torch.equal(sub_batch["labels"], tags[:2]) and torch.equal(sub_batch["student"]["input_ids"], b["input_ids"][:2])


@pytest.mark.parametrize("method", ["topk", "pos", "struct"])
def test_cached_teacher_targets_are_the_teachers(tmp_path, method):
    t = _tiny_bertcrf(0)
    b, _ = _batch()  # rows of 4, 2, 3 and 1 words
    calls = []

    def compute(batch):
        calls.append(1)
        return losses.teacher_targets(method, t(batch), k=3)

    def fail(batch):
        raise AssertionError("the teacher ran although every sentence is cached")

    cache = targetcache.TargetCache(tmp_path, "ab" * 32, method, 3, 1.0)
    first = cache.targets(b, compute)
    assert calls and all(torch.equal(first[k], v) for k, v in compute(b).items())
    # the same sentences in another batch (other order, less padding): from the cache, exactly the
    # teacher's targets of the first batch, padded like teacher_targets pads them
    sub = {k: v[[3, 1]] for k, v in b.items()}
    sub = {k: v[:, :4] if k in ("input_ids", "attention_mask", "token_type_ids") else v[:, :2] for k, v in sub.items()}
    again = cache.targets(sub, fail)
    direct = compute(sub)
    assert set(again) == set(direct)
    for k, v in direct.items():
        assert again[k].shape == v.shape and again[k].dtype == v.dtype
        assert torch.allclose(again[k].double(), v.double(), atol=1e-9), k
    if method != "topk":
        assert torch.equal(again["node"], first["node"][[3, 1], :2])
    cache.save()
    reloaded = targetcache.TargetCache(tmp_path, "ab" * 32, method, 3, 1.0)
    assert len(reloaded.entries) == 4
    back = reloaded.targets(b, fail)
    assert set(back) == set(first) and all(torch.equal(back[k], v) for k, v in first.items())
    assert not targetcache.TargetCache(tmp_path, "cd" * 32, method, 3, 1.0).entries  # another teacher


# ---------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def small_teacher(tmp_path_factory, toy_data_dir):
    enc = make_tiny_encoder(tmp_path_factory.mktemp("enc2"), layers=2, seed=1)
    out = tmp_path_factory.mktemp("runs") / "teacher"
    teacher.main(["--model", str(enc), "--dataset", str(toy_data_dir), "--out", str(out), "--epochs", "2",
                  "--batch_size", "8", "--lr", "1e-3", "--head_lr", "1e-2", "--threads", "1"])
    return out


@pytest.fixture
def pool_file(tmp_path):
    p = tmp_path / "pool.txt"
    p.write_text("\n".join(" ".join(w) for w, _ in toy_sentences(30, 11)) + "\n")
    return p


def _distill(teacher_dir, out, *args):
    return distill.main(["--teacher", str(teacher_dir), "--out", str(out), "--epochs", "2", "--batch_size", "8",
                         "--lr", "1e-3", "--head_lr", "1e-2", "--pilot_lr", "1e-2", "--teacher_lr", "1e-4",
                         "--threads", "1", "--log_every", "1", "--limit_train", "40", *args])


@pytest.mark.parametrize("cached", [False, True])
def test_resume_with_extra_text_is_exact(small_teacher, tmp_path, monkeypatch, pool_file, cached, capsys):
    args = ["--method", "pos", "--unlabeled", str(pool_file), "--augment", "mention-swap,mask",
            "--extra-share", "0.25", "--stage1-epochs", "1"]
    if cached:  # epoch 1 sees every labelled (36) and every extra (30) sentence; epoch 2 only cached ones
        args = ["--method", "topk", "--unlabeled", str(pool_file), "--teacher-cache", str(tmp_path / "c")]
    straight = tmp_path / "straight"
    _distill(small_teacher, straight, *args)
    resumed = tmp_path / "resumed"
    undo = kill_during_epoch(monkeypatch, epoch=2, after_batches=2)
    with pytest.raises(KeyboardInterrupt):
        _distill(small_teacher, resumed, *args)
    undo()
    capsys.readouterr()
    files = list((tmp_path / "c").iterdir()) if cached else []
    stamp = [f.stat().st_mtime_ns for f in files]
    _distill(small_teacher, resumed, *args, "--resume")
    if cached:
        cached_n = int(capsys.readouterr().out.split("teacher targets: ")[1].split()[0])
        assert 36 < cached_n <= 66, cached_n  # distinct labelled + extra sentences
        assert len(files) == 1 and [f.stat().st_mtime_ns for f in files] == stamp  # epoch 2 added nothing
    for part in ("last/model.safetensors", "last/crf.safetensors"):
        a, b = load_file(str(straight / part)), load_file(str(resumed / part))
        assert all(torch.equal(a[k], b[k]) for k in a), part
    if cached:
        return
    info = json.loads((straight / "best" / "run.json").read_text())
    x = info["extra_text"]
    assert x["sources"] == {f"{pool_file} (text)": 30} and x["batch"] == [6, 2] and x["stage1_epochs"] == 1
    assert x["augmented"]["mask"] == 36 and 0 < x["augmented"]["mention-swap"] <= 36  # 40 - 10% holdout
    assert x["sentences"] == 30 + sum(x["augmented"].values()) - x["dropped_dev_test"]
    log = [json.loads(l) for l in (straight / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r]
    stage1 = [r for r in steps if r["epoch"] == 1]
    assert len(stage1) == -(-x["sentences"] // 8) and all("nll" not in r and r["loss"] == r["kd"] for r in stage1)
    assert all("nll" in r for r in steps if r["epoch"] == 2) and len(steps) - len(stage1) == 6  # ceil(36 / 6)


@pytest.mark.parametrize("method", ["topk", "msd"])
def test_other_methods_train_on_extra_text(small_teacher, tmp_path, method):
    out = tmp_path / method
    result = _distill(small_teacher, out, "--method", method, "--augment", "mask", "--epochs", "1",
                      "--limit_train", "24")
    assert 0.0 <= result["dev"]["f1"] <= 1.0
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert all("kd" in r and "nll" in r for r in log if "step" in r)
    assert any("quiz_loss" in r for r in log if "step" in r) == (method == "msd")


@pytest.mark.parametrize("args,match", [
    (["--unlabeled", "missing.txt"], "missing.txt: no such file, and not a dataset name"),
    (["--unlabeled", "conll2099"], "conll2099: no such file"),
    (["--unlabeled", "EMPTY"], "empty file"),
    (["--unlabeled", "JSON"], "looks like JSON"),
    (["--unlabeled", "LATIN1"], "not UTF-8"),
    (["--augment", "mention-swap,shuffle"], "unknown kind 'shuffle'"),
    (["--augment", "mask", "--extra-share", "0"], r"--extra-share must be in \(0, 1\)"),
    (["--augment", "mask", "--extra-share", "1.5"], r"--extra-share must be in \(0, 1\)"),
    (["--augment", "mask", "--method", "none"], "needs a KD method"),
    (["--augment", "mask", "--stage1-epochs", "2"], "must be below --epochs"),
    (["--stage1-epochs", "1"], "needs a value >= 0 and extra text"),
    (["--teacher-cache", "c", "--method", "msd"], "needs a frozen teacher"),
])
def test_bad_input_exits_2_with_one_line(small_teacher, tmp_path, capsys, args, match):
    files = {"EMPTY": b"", "JSON": b'["anna", "sings"]\n', "LATIN1": "caf\u00e9 au lait\n".encode("latin-1")}
    args = [str(tmp_path / a) if a in files else a for a in args]
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier run")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _distill(small_teacher, out, "--method", "pos", *args, "--overwrite")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert __import__("re").search(match, err[0]), err
    if "LATIN1" in " ".join(args) or any(str(tmp_path) in a for a in args):
        assert str(tmp_path) in err[0]  # the file is named
    assert (out / "keep.txt").read_text() == "an earlier run" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
