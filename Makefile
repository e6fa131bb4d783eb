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
	# xds-protos ships an old copy of opentelemetry-proto's modules at the same paths, and whichever installs
	# last wins: put back opentelemetry-proto's own, which the OTLP exporter needs.
	$(PIP) install --force-reinstall --no-deps "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
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

# checkov scans the Helm chart's rendered manifests in tests/unit/test_helm_manifests.py. It lives in a venv of
# its own: it pins packages the project's venv needs newer.
CHECKOV_VENV := .venv-checkov
CHECKOV      := $(CHECKOV_VENV)/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip --disable-pip-version-check -q install 'checkov>=3.2,<4'

# pytest exits 5 when it collected nothing; make treats any non-zero exit as failure.
test: $(STAMP) browser $(CHECKOV)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check authz controlplane tests bench
	$(BIN)/mypy authz controlplane

# The chart's image (k8s/Dockerfile), with Docker or Podman, from a context holding only what the wheel is built
# from (build/image). Name it for your registry: make image IMAGE=registry.example.com/keyward IMAGE_TAG=0.1.0.
IMAGE     ?= keyward
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
.PHONY: image
image:
	@if command -v docker >/dev/null 2>&1; then engine=docker; \
	elif command -v podman >/dev/null 2>&1; then engine=podman; \
	else echo "make image: neither docker nor podman is installed: install one (see k8s/README.md), or build k8s/Dockerfile with another OCI builder" >&2; exit 2; fi; \
	if ! $$engine info >/dev/null 2>&1; then \
	  echo "make image: $$engine is installed but cannot reach its daemon ('$$engine info' fails): start it, or use the other engine" >&2; exit 2; fi; \
	rm -rf build/image && mkdir -p build/image && \
	tar -c --exclude=__pycache__ --exclude='*.pyc' pyproject.toml README.md authz controlplane | tar -x -C build/image && \
	cp k8s/Dockerfile build/image/Dockerfile && \
	echo "$$engine build -t $(IMAGE):$(IMAGE_TAG) build/image" && \
	$$engine build -t $(IMAGE):$(IMAGE_TAG) build/image && \
	echo "built $(IMAGE):$(IMAGE_TAG); install the chart with --set image.repository=$(IMAGE) --set image.tag=$(IMAGE_TAG)"

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) build *.egg-info
