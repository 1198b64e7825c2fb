# `make demo` and `make test` each set up .venv when missing or stale, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdscope-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
FMNIST := /usr/share/datasets/fashion-mnist
# The workspace's shared data (FSDD, SST-2, Tiny Shakespeare); tests skip what is absent.
KDSCOPE_DATA ?= $(CURDIR)/../shared/data
export KDSCOPE_DATA

.PHONY: setup demo test lint format data browser

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS) || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e '.[dev,text,audio,dense]'
	touch $(STAMP)

# Fashion-MNIST from Debian when apt is available and we are root; tests skip what is absent.
data:
	@test -d $(FMNIST) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
	  echo "note: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"; }

# Chromium + chromedriver for the report's browser test (skipped, with a reason, when absent).
browser:
	@test -x /usr/bin/chromedriver || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "note: chromium-driver not installed; the browser test will be skipped"; }

# Fashion-MNIST when `data` can install it, else the bundled digits (kdscope.demo picks).
demo: setup data
	$(BIN)/kdscope demo

test: setup data browser
	$(BIN)/python -m pytest

lint:
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format:
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks
