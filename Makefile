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
STUDENT_EPOCHS ?= 3
# the budget of training/recipes/best.json, given to the undistilled baseline too (a test checks they agree)
RECIPE_EPOCHS ?= 10
RECIPE_PATIENCE ?= 3
PY     := $(BIN)/python

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

# The main job on the offline defaults (MiniLM-L6 teacher, WNUT-16 tweets): teacher -> undistilled
# baseline, MSD and recipe students (3 layers) -> F1 / size table -> ONNX export (fp32 + int8) with
# parity figures. Every step resumes: re-running `make run` skips what is finished.
run: $(STAMP)
	$(PY) -m training.teacher --out $(RUNS)/teacher --epochs $(EPOCHS) --resume
	$(PY) -m training.distill --method none --teacher $(RUNS)/teacher --out $(RUNS)/student-none \
		--epochs $(RECIPE_EPOCHS) --patience $(RECIPE_PATIENCE) --resume
	$(PY) -m training.distill --method msd --teacher $(RUNS)/teacher --out $(RUNS)/student \
		--epochs $(STUDENT_EPOCHS) --resume
	$(PY) -m training.distill --recipe best --teacher $(RUNS)/teacher --out $(RUNS)/student-recipe --resume
	$(PY) -m training.report $(RUNS)/teacher $(RUNS)/student-none $(RUNS)/student $(RUNS)/student-recipe
	$(PY) -m export.onnx $(RUNS)/student --quantize int8

clean:
	rm -rf $(RUNS) .pytest_cache
