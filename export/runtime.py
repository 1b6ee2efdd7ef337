"""ONNX Runtime: the one session factory and the ONNX Runtime emissions backend of the pipeline.

:func:`open_session` makes every ONNX Runtime session of the toolkit -- the serving engine, the
exporter's parity check and quantisation candidates (:mod:`export.onnx`), the export evaluation
(:mod:`export.evaluate`) and the GEMM limit (:mod:`benchmarks.gemm`) -- with the options of
:func:`session_options`. :class:`OrtEmissions` feeds an exported graph's logits to
:class:`export.pipeline.Tagger`. Torch-free: NumPy and onnxruntime (imported when a session is made).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["SessionError", "session_options", "open_session", "OrtEmissions", "matmul_model", "u8s8_saturates",
           "GRAPH_OPTIMIZATION", "EXECUTION_MODES", "DEVICES"]

GRAPH_OPTIMIZATION = ("all", "extended", "basic", "disable")
EXECUTION_MODES = ("sequential", "parallel")
DEVICES = ("cpu", "cuda")


class SessionError(ValueError):
    """Bad session settings, a missing execution provider or a model ONNX Runtime cannot load."""


def session_options(threads: int | None = None, inter_op_threads: int = 1, spinning: bool = False,
                    graph_optimization: str = "all", execution_mode: str = "sequential"):
    """ONNX Runtime session options. ``threads``: intra-op threads (``None``: ONNX Runtime's
    default, one per core); ``inter_op_threads``: threads running independent nodes in parallel
    (only with ``execution_mode="parallel"``); ``spinning``: idle worker threads busy-wait for the
    next run (off by default: in a server they would take the CPU from the event loop and the
    tokenizer); ``graph_optimization``: ONNX Runtime's graph optimisation level."""
    import onnxruntime as ort

    if threads is not None and int(threads) < 1:
        raise SessionError(f"threads must be >= 1, got {threads}")
    if int(inter_op_threads) < 1:
        raise SessionError(f"inter_op_threads must be >= 1, got {inter_op_threads}")
    if graph_optimization not in GRAPH_OPTIMIZATION:
        raise SessionError(f"unknown graph_optimization {graph_optimization!r}: use {', '.join(GRAPH_OPTIMIZATION)}")
    if execution_mode not in EXECUTION_MODES:
        raise SessionError(f"unknown execution_mode {execution_mode!r}: use {', '.join(EXECUTION_MODES)}")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.inter_op_num_threads = int(inter_op_threads)
    if threads:
        so.intra_op_num_threads = int(threads)
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[graph_optimization]
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if execution_mode == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    return so


def open_session(model: str | os.PathLike | bytes, threads: int | None = None, device: str = "cpu", **options):
    """An ``onnxruntime.InferenceSession`` of ``model`` (a path, or a serialized graph) on ``device``
    (``cpu``, or ``cuda``: the CUDAExecutionProvider, CPU for what it lacks) with
    :func:`session_options` ``(threads, **options)``. :class:`SessionError` (one line) otherwise."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        providers = ["CPUExecutionProvider"]
    elif device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise SessionError("device 'cuda' needs onnxruntime's CUDAExecutionProvider (pip install "
                               f"onnxruntime-gpu); this onnxruntime has: {', '.join(available)}")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        raise SessionError(f"unknown device {device!r}: use {' or '.join(DEVICES)}")
    so = session_options(threads, **options)
    where = "serialized model" if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), so, providers=providers)
    except Exception as e:
        raise SessionError(f"{where}: ONNX Runtime could not load the model: {e}") from None
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise SessionError("CUDAExecutionProvider is installed but could not be initialised (CUDA / cuDNN "
                           f"libraries?); session providers: {session.get_providers()}")
    return session


def matmul_model(w: np.ndarray, tokens: int, a_zero_point: int | None = None, name: str = "matmul"):
    """A one-node ONNX graph ``Y = A @ W``: ``W`` the constant ``w`` ``(k, n)``, ``A`` an input ``(tokens, k)``.
    A float32 ``w`` gives ``MatMul`` (float32 in and out); an int8 ``w`` gives ``MatMulInteger`` (``A`` uint8,
    less ``a_zero_point`` when given; ``Y`` int32). Needs the ``onnx`` package."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    inits = [numpy_helper.from_array(w, "W")]
    if w.dtype == np.int8:
        inputs = ["A", "W"]
        if a_zero_point is not None:
            inits.append(numpy_helper.from_array(np.array(a_zero_point, dtype=np.uint8), "a_zero_point"))
            inputs.append("a_zero_point")
        node = helper.make_node("MatMulInteger", inputs, ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        node = helper.make_node("MatMul", ["A", "W"], ["Y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], name, [helper.make_tensor_value_info("A", a_type, [tokens, k])],
                              [helper.make_tensor_value_info("Y", y_type, [tokens, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


_SATURATES: dict = {}


def u8s8_saturates() -> bool | None:
    """Whether ONNX Runtime's uint8 x int8 integer matrix product saturates on this CPU (cached).

    On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) the kernels add pairs of uint8 x int8
    products in int16, so two products of 255 x 127 overflow and saturate; ONNX Runtime's advice is
    7-bit weights there (``python -m export.onnx --reduce-range``). Measured, not guessed from CPU
    flags: a ``MatMulInteger`` of 255s by 127s against its exact result. ``None`` when the ``onnx``
    package (to build the probe graph) is not installed, as in the serving-only image."""
    if "cpu" not in _SATURATES:
        try:
            import onnx  # noqa: F401  (matmul_model needs it)
        except ImportError:
            return None
        k = 64
        model = matmul_model(np.full((k, 8), 127, dtype=np.int8), 4, name="u8s8_probe")
        y = open_session(model.SerializeToString(), 1).run(None, {"A": np.full((4, k), 255, dtype=np.uint8)})[0]
        _SATURATES["cpu"] = bool((y != k * 255 * 127).any())
    return _SATURATES["cpu"]


class OrtEmissions:
    """Emissions of an exported graph (``input_ids``, ``attention_mask``[, ``token_type_ids``] ->
    ``logits`` ``(B, S, L)``) for :class:`export.pipeline.Tagger`. ``batch_invariant``: whether a
    sequence's logits do not depend on its batch-mates (:func:`export.format.batch_invariant`;
    ``False`` makes the tagger run every window alone). ``io_binding``: run through an ONNX Runtime
    IO binding (inputs bound, the output allocated by ONNX Runtime) instead of ``session.run``."""

    def __init__(self, session, batch_invariant: bool = True, io_binding: bool = False):
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.batch_invariant = bool(batch_invariant)
        self.io_binding = bool(io_binding)

    def logits(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if not self.io_binding:
            return self.session.run(None, feed)[0]
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(self.session.get_outputs()[0].name)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]
