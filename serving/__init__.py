"""Serving: ONNX Runtime inference (:mod:`serving.engine`), the HTTP API (:mod:`serving.server`,
``python -m serving EXPORT_DIR``; :mod:`serving.metrics`, :mod:`serving.batching`,
:mod:`serving.requests`), bulk tagging (``python -m serving.tag``) and the bad-input corpus
(:mod:`serving.badinput`, for the tests and the load test). The benchmark and the load test live in
:mod:`benchmarks` (``python -m benchmarks.serving_bench``, ``python -m benchmarks.serving_load``).

Importing this package imports nothing heavy; the engine and the server never import torch or
transformers (the ``serve`` extra has neither).
"""
