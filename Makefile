# The two commands of the README: `make pipeline` and `make test`.
# Each does its own set-up: a .venv with the package installed (editable) and its tools.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Stages run `python -m stages.NAME`; the venv must come first on PATH for dvc's subprocesses.
export PATH := $(abspath $(BIN)):$(PATH)
export GX_ANALYTICS_ENABLED := false

.PHONY: install browser pipeline test clean
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

pipeline: install
	$(BIN)/dvc repro

# The UI tests drive Debian's Chromium and ChromeDriver (no browser download at test time).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: install browser
	$(BIN)/python -m pytest

clean:
	rm -rf data/sample data/manifest.parquet reports
