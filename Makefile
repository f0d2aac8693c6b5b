# podtrace: `sudo make demo` and `sudo make test` are all a new user needs.
VENV    := .venv
PY      := $(VENV)/bin/python
PYTEST  := $(PY) -m pytest

.PHONY: setup demo test test-unit test-e2e test-vm check lint typecheck bench image lab-down clean

setup:
	@bash scripts/setup.sh

# The lab with one broken Service endpoint and steady traffic, so the TUI has something to find.
demo: setup
	$(VENV)/bin/podtrace lab up --if-down
	$(VENV)/bin/podtrace lab fault drop-backend --on
	$(VENV)/bin/podtrace lab traffic --background --rate 20
	$(VENV)/bin/podtrace tui --node pt-node1 --node pt-node2

# The whole suite: lint, types, unit tests, then root end-to-end tests on this kernel.
test: setup check test-e2e test-vm

test-unit:
	$(PYTEST) -q tests/unit

test-e2e:
	$(PYTEST) -q -m root tests/e2e

test-vm: setup
	$(PYTEST) -q tests/vm

lint:
	$(PY) -m ruff check tracer tui bpf tests

typecheck:
	$(PY) -m mypy

check: lint typecheck test-unit

bench: setup
	$(PY) -m tracer.benchmarks --out BENCHMARKS.md

# The serve container image (tracer/serve/deploy/Dockerfile) with docker, podman or buildah; not part of test/check.
image:
	@bash scripts/build-image.sh $(IMAGE)

lab-down:
	$(VENV)/bin/podtrace lab down

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
