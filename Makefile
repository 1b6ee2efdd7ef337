# Two commands for a newcomer:  make run  (set up + full pipeline on the offline defaults)
#                               make test (set up + the test suite)
# torch is installed FIRST and pinned (a CPU wheel); an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNS   ?= runs
EPOCHS ?= 5

export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[train,serve,demo,dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

run: $(STAMP)
	$(BIN)/python -m training.teacher --out $(RUNS)/teacher --epochs $(EPOCHS) --resume
	$(BIN)/python -m training.evaluate $(RUNS)/teacher --split test

clean:
	rm -rf $(RUNS) .pytest_cache
