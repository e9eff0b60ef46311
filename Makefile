# The README's two commands. `make serve` installs everything, writes the demo model and
# starts the whole stack on it; `make test` installs what the tests need and runs them
# (.ci/run calls it). `make demo` completes two prompts offline instead.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
DEMO_DIR ?= demo-model

.PHONY: install serve demo test lint

install:
	@# Keep an existing torch (a CUDA build on a GPU box); else take the CPU wheel.
	$(PYTHON) -c 'import torch' 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'

$(DEMO_DIR)/config.json:
	$(PYTHON) -m orca.cli demo-model $(DEMO_DIR)

serve: install $(DEMO_DIR)/config.json
	$(PYTHON) -m orca.cli serve --model $(DEMO_DIR)

demo: install $(DEMO_DIR)/config.json
	$(PYTHON) -m orca.cli generate --model $(DEMO_DIR) --max-tokens 24 \
		"Iteration-level scheduling means" "The KV cache holds"

lint:
	ruff check .
	ruff format --check .
	lint-imports

test: install lint
	$(PYTHON) -m pytest -q
