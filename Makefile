# The README's first two commands: `make demo` and `make test`. Both set up .venv on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS ?= constraints-cpu.txt
RUN_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast lint bench clean

$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# pip's index config on some machines prints one harmless line per package; keep the rest.
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[dev]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(PY) -c "import ctiir, torch, torchvision, open_clip, lightning; print('ctiir', ctiir.__version__, 'torch', torch.__version__)"
	touch $@

install: $(VENV)/.installed

# One torch thread unless told otherwise: the demo's DataLoader worker takes the other core of a 2-core
# machine, and two OpenMP threads on a busy core made it 3x slower (docs/performance.md, "The demo"). The
# thread count also fixes the float summation order, so the README's numbers reproduce.
demo: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/ctiir progressive --config synthetic --run_dir $(RUN_DIR)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check ctiir tests examples benchmarks

bench: install
	$(PY) benchmarks/bench_recall.py

clean:
	rm -rf $(VENV) build dist *.egg-info runs
