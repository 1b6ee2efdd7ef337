"""The hardware-limit tools (issue #16): the encoder FLOPs formula against a hand count and against
torch's FLOP counter, and the GEMM measurement on tiny shapes."""
import json

import pytest

from benchmarks import gemm


def test_flops_hand_count():
    # h=4, i=8, 1 layer, 3 labels, n=2 sub-tokens, a multiply-add = 2 FLOPs:
    #   q, k, v: 3 * 2*2*4*4 = 192;  scores 2*2*2*4 = 32;  probs x v 32;  output 2*2*4*4 = 64
    #   ffn up 2*2*4*8 = 128, down 128;  classifier 2*2*4*3 = 48           -> 624
    cfg = {"num_hidden_layers": 1, "hidden_size": 4, "intermediate_size": 8, "num_labels": 3}
    assert gemm.encoder_flops(cfg, [2]) == 192 + 32 + 32 + 64 + 128 + 128 + 48 == 624
    assert gemm.encoder_flops(cfg, [2, 2]) == 2 * 624  # per sequence: no cross terms, no padding
    assert gemm.flops_per_token(cfg, 2) == 312
    # two layers, the id2label count for labels, intermediate defaulting to 4h
    cfg2 = {"num_hidden_layers": 2, "hidden_size": 4, "id2label": {"0": "O", "1": "B-X", "2": "I-X"}}
    n = 3
    assert gemm.encoder_flops(cfg2, [n]) == 2 * (8 * n * 16 + 4 * n * n * 4 + 4 * n * 4 * 16) + 2 * n * 4 * 3
    with pytest.raises(ValueError, match="num_hidden_layers"):
        gemm.encoder_flops({"hidden_size": 4}, [1])


def test_flops_match_torch_flop_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForTokenClassification

    cfg = BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                     num_labels=5, attn_implementation="eager")
    torch.manual_seed(0)
    model = BertForTokenClassification(cfg).eval()
    for n in (1, 7, 13):
        x = torch.randint(0, 100, (1, n))
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(input_ids=x, attention_mask=torch.ones_like(x))
        assert fc.get_total_flops() == gemm.encoder_flops(cfg.to_dict(), [n]), n


@pytest.mark.parametrize("precision", gemm.PRECISIONS)
def test_gemm_graph_computes_a_matmul(precision):
    import numpy as np
    import onnxruntime as ort
    from onnx import numpy_helper

    model = gemm.gemm_model(3, 5, 7, precision)
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "W"))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if precision == "fp32":
        a = rng.standard_normal((3, 5)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"A": a})[0], a @ w, rtol=1e-5, atol=1e-5)
    else:
        # inputs below 128: no pair of products can leave int16, so the answer is exact on every CPU
        # (without VNNI, ONNX Runtime's uint8 x int8 kernels saturate larger ones; see the next test)
        a = rng.integers(0, 128, (3, 5), dtype=np.uint8)
        ref = (a.astype(np.int32) - 128) @ w.astype(np.int32)
        np.testing.assert_array_equal(sess.run(None, {"A": a})[0], ref)


def test_u8s8_saturation_probe_agrees_with_a_full_range_product():
    """export.runtime.u8s8_saturates says whether full-range uint8 x int8 products come out wrong on
    this CPU: checked on the GEMM graph with the largest inputs (exact on VNNI CPUs, saturated on AVX2)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import numpy_helper

    from export.runtime import u8s8_saturates

    model = gemm.gemm_model(4, 32, 6, "int8")
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "W"))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.where(w[:, :1].T > 0, 255, 0).repeat(4, axis=0).astype(np.uint8)  # 255 where column 0's weight is positive
    exact = (a.astype(np.int32) - 128) @ w.astype(np.int32)
    assert u8s8_saturates() is bool((sess.run(None, {"A": a})[0] != exact).any())


def test_gemm_cli_tiny(tmp_path, capsys):
    r = gemm.measure_gemm(8, 16, 32, "int8", threads=1, seconds=0.05)
    assert r["gflops"] > 0 and r["runs"] >= 3 and r["shape"] == [8, 16, 32]
    out = tmp_path / "gemm"
    assert gemm.main(["--hidden", "16", "--intermediate", "32", "--tokens", "8", "--threads", "1", "--seconds", "0.05",
                      "--out", str(out)]) == 0
    rep = json.loads((tmp_path / "gemm.json").read_text())
    assert set(rep["limits"]) == {"fp32", "int8"} and all(v["gflops"] > 0 for v in rep["limits"].values())
    assert "GFLOP/s" in (tmp_path / "gemm.md").read_text()
    assert gemm.main(["--export", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
