"""Serving: ONNX Runtime inference (:mod:`serving.engine`), the HTTP API (:mod:`serving.server`,
``python -m serving EXPORT_DIR``), the bad-input corpus (:mod:`serving.badinput`), the benchmark
(``python -m serving.bench``) and the load test (``python -m serving.load``).

Importing this package imports nothing heavy; the engine and the server never import torch or
transformers (the ``serve`` extra has neither).
"""
