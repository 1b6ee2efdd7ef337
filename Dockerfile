# Inference image: ONNX Runtime + tokenizers + FastAPI, no torch / transformers.
#
#   python -m export.onnx runs/student --quantize int8          # -> runs/student/onnx
#   docker build --build-arg EXPORT_DIR=runs/student/onnx -t msd-ner-serve .
#   docker run --rm -p 8000:8000 msd-ner-serve                  # add: --precision int8, --threads 2, ...
#   curl -s localhost:8000/v1/ner -H 'content-type: application/json' -d '{"text": "Angela Merkel visited Paris."}'
#
# EXPORT_DIR is relative to the build context and must not be excluded by .dockerignore
# (exports under runs/**/onnx are let through).
FROM python:3.11-slim

ARG EXPORT_DIR=runs/student/onnx

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false

# only what the `serve` extra needs: the package sources of the serving path
WORKDIR /src
COPY pyproject.toml README* ./
COPY export/ export/
COPY serving/ serving/
RUN pip install ".[serve]" \
    && python -c "import importlib.util as u, sys; sys.exit(1 if u.find_spec('torch') else 0)" \
    && rm -rf /src

WORKDIR /
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ner
COPY --chown=root:root ${EXPORT_DIR}/ /model/
RUN chmod -R a+rX /model && python -c "from export import format as f; f.read_manifest('/model'); f.read_crf('/model')"

USER ner
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
# 0.0.0.0 on purpose: inside the container, the port is only reachable through `docker run -p`.
CMD ["python", "-m", "serving", "/model", "--host", "0.0.0.0", "--port", "8000"]
