# Keyward: `make up` runs the stack, `make test` runs the suite, `make bench` writes bench/RESULTS.md.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: up test bench lint clean install

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -U pip
	$(PIP) install -e '.[test,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

up: $(STAMP)
	$(BIN)/keyward up

# pytest exits 5 when it collected nothing; make treats any non-zero exit as failure.
test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check authz controlplane tests bench
	$(BIN)/mypy authz controlplane

clean:
	rm -rf $(VENV) build *.egg-info
