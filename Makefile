# One-command setup, demo and tests. Re-running a target that is up to date does nothing.
#   make setup   system packages (apt) + .venv with every Python dependency
#   make demo    the offline demo on the tiny model (writes demo_output/)
#   make app     the studio page on http://127.0.0.1:7860 (an example library in datasets/example first)
#   make test    the whole test suite, offline
#   make bench   the benchmarks (slow: tens of minutes on a CPU)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
# TensorFlow: quiet logs and no GPU grab (the classifier is small; the GPU is MusicGen's).
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup system-deps python-deps demo app test bench clean

setup: system-deps python-deps

system-deps:
	@bash scripts/install_system_deps.sh

python-deps: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# audiocraft goes in with --no-deps: its pins (torch==2.1.0, av==11, numpy<2, xformers<0.0.23)
# cannot be installed on Python 3.11 next to current transformers; requirements.txt lists
# what it really imports.
$(STAMP): requirements.txt requirements-nodeps.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --no-deps -e .
	$(BIN)/python scripts/check_install.py
	@touch $@

demo: setup
	$(BIN)/python demo.py --out demo_output

# The page's Data tab lists datasets/: a first run finds a small example library there to try.
app: setup
	@test -e datasets/example || $(BIN)/python -m dataset_tools example datasets/example
	$(BIN)/python -m musicgen_trainer.app --data-root datasets --checkpoints checkpoints

test: setup
	@bash scripts/install_system_deps.sh --test
	$(BIN)/python -m pytest -q --durations=15 --durations-min=1 tests

# Speed and memory figures (docs/benchmarks.md); each script compares against a baseline in the same run.
bench: setup
	$(BIN)/python bench/bench_prepare.py
	$(BIN)/python bench/bench_classifier.py
	$(BIN)/python bench/bench_separate.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_generate.py

clean:
	rm -rf demo_output .pytest_cache
