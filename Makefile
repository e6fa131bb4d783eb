# Keyward: `make up` runs the stack, `make test` runs the suite, `make bench` writes bench/RESULTS.md.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: up test bench lint clean install browser

# The console's browser tests drive Debian's Chromium and ChromeDriver; install them when they are missing
# (apt-get as root, or through sudo). Without them, the browser tests fail and say why.
BROWSER_PACKAGES := chromium chromium-driver

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

browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO="sudo -n"; else \
	    echo "Chromium is missing and cannot be installed without root: apt-get install $(BROWSER_PACKAGES)"; exit 0; fi; \
	  echo "Installing $(BROWSER_PACKAGES) for the console's browser tests"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null; \
	fi

# pytest exits 5 when it collected nothing; make treats any non-zero exit as failure.
test: $(STAMP) browser
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check authz controlplane tests bench
	$(BIN)/mypy authz controlplane

clean:
	rm -rf $(VENV) build *.egg-info
