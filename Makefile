# The README's two commands. `make demo` installs everything and runs the demo model;
# `make test` installs what the tests need and runs them (.ci/run calls it).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
DEMO_DIR ?= demo-model

.PHONY: install demo test lint

install:
	@# Keep an existing torch (a CUDA build on a GPU box); else take the CPU wheel.
	$(PYTHON) -c 'import torch' 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'

demo: install
	$(PYTHON) -m orca.cli demo-model $(DEMO_DIR)
	$(PYTHON) -m orca.cli generate --model $(DEMO_DIR) --max-tokens 24 \
		"Iteration-level scheduling means" "The KV cache holds"

lint:
	ruff check .
	ruff format --check .
	lint-imports

test: install lint
	$(PYTHON) -m pytest -q
