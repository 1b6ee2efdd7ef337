"""BERT-CRF model and the checkpoint format (tiny random encoders, real MiniLM tokenizer)."""

import json

import pytest
import torch
from transformers import AutoModelForTokenClassification

from training import checkpoint as ckpt
from training import data as data_lib
from training import model as model_lib
from training.crf import viterbi

from conftest import TOY_LABELS, toy_sentences


def _batch(tok, sentences, labels=TOY_LABELS):
    from training.corpora import Sentence

    sents = [Sentence(w, t) for w, t in sentences]
    enc = data_lib.encode(sents, tok, {l: i for i, l in enumerate(labels)}, max_length=32)
    b = data_lib.collate(enc.items, tok.pad_token_id)
    b.pop("index", None)
    return b


@pytest.fixture(scope="module")
def tiny(tiny_encoder_dir):
    torch.manual_seed(0)
    enc = AutoModelForTokenClassification.from_pretrained(tiny_encoder_dir)
    model = model_lib.BertCrf(enc).eval()
    with torch.no_grad():
        for p in model.crf.parameters():
            p.normal_()
    return model, model_lib.load_tokenizer(str(tiny_encoder_dir))


def test_emissions_are_first_subtoken_logits(tiny):
    model, tok = tiny
    b = _batch(tok, [(["unbelievably", "long", "words"], ["O", "O", "O"]), (["oslo"], ["B-LOC"])])
    p = model(b)
    logits = model.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                           token_type_ids=b["token_type_ids"]).logits
    assert p.emissions.shape == (2, 3, len(TOY_LABELS))
    for bi in range(2):
        for wi in range(int(b["word_mask"][bi].sum())):
            assert torch.equal(p.emissions[bi, wi], logits[bi, b["word_index"][bi, wi]])
    # "unbelievably" is several word pieces: the second word starts after them
    assert b["word_index"][0, 1] > b["word_index"][0, 0] + 1
    assert p.mask.tolist() == [[True, True, True], [True, False, False]]


def test_save_load_roundtrip_and_plain_transformers(tiny, tmp_path):
    model, tok = tiny
    model.save(tmp_path / "ck", tok, {"kind": "teacher", "args": {"max_length": 32}})
    loaded, tok2, info = model_lib.load(tmp_path / "ck")
    loaded.eval()
    b = _batch(tok, toy_sentences(4, 0))
    p1, p2 = model(b), loaded(b)
    assert torch.allclose(p1.emissions, p2.emissions, atol=1e-6)
    for k in ckpt.CRF_KEYS:
        assert torch.equal(getattr(model.crf, k), getattr(loaded.crf, k))
    assert model.decode(b) == loaded.decode(b)
    assert info["labels"] == TOY_LABELS and info["kind"] == "teacher" and info["format"] == ckpt.FORMAT
    plain = AutoModelForTokenClassification.from_pretrained(tmp_path / "ck")
    assert plain.config.id2label[3] == "B-PER"
    assert (tmp_path / "ck" / "model.safetensors").exists() and not list((tmp_path / "ck").glob("*.bin"))
    crf_np = ckpt.read_crf_numpy(tmp_path / "ck")
    assert crf_np["transitions"].shape == (len(TOY_LABELS),) * 2


def test_decode_matches_crf_viterbi(tiny):
    model, tok = tiny
    b = _batch(tok, toy_sentences(5, 1))
    p = model(b)
    _, paths = viterbi(*p.args())
    got = model.decode(b)
    for i, path in enumerate(got):
        assert path == paths[i, : len(path)].tolist()
        assert len(path) == int(b["word_mask"][i].sum())


def test_not_a_checkpoint_errors(tmp_path, tiny_encoder_dir):
    with pytest.raises(ckpt.CheckpointError, match="no such directory"):
        ckpt.resolve(tmp_path / "missing")
    with pytest.raises(ckpt.CheckpointError, match="crf.safetensors"):
        model_lib.load(tiny_encoder_dir)  # a plain HF folder: no CRF, no run.json


def test_foreign_format_rejected(tiny, tmp_path):
    model, tok = tiny
    model.save(tmp_path / "ck", tok, {})
    info = json.loads((tmp_path / "ck" / "run.json").read_text())
    info["format"] = "something-else"
    (tmp_path / "ck" / "run.json").write_text(json.dumps(info))
    with pytest.raises(ckpt.CheckpointError, match="format"):
        ckpt.read_run(tmp_path / "ck")


def test_atomic_dir_keeps_old_version_on_error(tmp_path):
    target = tmp_path / "best"
    with ckpt.atomic_dir(target) as d:
        (d / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with ckpt.atomic_dir(target) as d:
            (d / "a.txt").write_text("half")
            raise RuntimeError("crash while writing")
    assert (target / "a.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temp dirs left


def test_resolve_recovers_from_crash_between_renames(tiny, tmp_path):
    model, tok = tiny
    run = tmp_path / "run"
    model.save(run / "best.old", tok, {})  # state after "best -> best.old", before "tmp -> best"
    assert ckpt.resolve(run) == run / "best"
    assert ckpt.is_checkpoint(run / "best")


def test_head_parameters_are_classifier_and_crf(tiny):
    model, _ = tiny
    names = model.head_parameter_names()
    assert names == {"encoder.classifier.weight", "encoder.classifier.bias",
                     "crf.transitions", "crf.start", "crf.end"}


def test_recover_any_atomic_dir(tmp_path):
    (tmp_path / "last.old").mkdir()
    (tmp_path / "last.old" / "trainer_state.json").write_text("{}")
    assert ckpt.recover(tmp_path / "last") == tmp_path / "last"
    assert (tmp_path / "last" / "trainer_state.json").exists() and not (tmp_path / "last.old").exists()
    (tmp_path / "last.old").mkdir()  # both present: the new one wins, nothing is touched
    assert ckpt.recover(tmp_path / "last").exists() and (tmp_path / "last.old").exists()
