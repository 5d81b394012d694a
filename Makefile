# carpd: the two commands README.md starts with are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := $(shell grep -v '^\s*\#' .ci/apt-packages)

.PHONY: deps venv lint unit test demo bench clean

deps:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi

$(VENV)/.done: requirements-ci.txt pyproject.toml
	/usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-ci.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

venv: deps $(VENV)/.done

lint: venv
	$(VENV)/bin/ruff check src tests bench demo lab
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest -q tests/unit

test: venv lint
	$(PY) -m pytest -q -ra tests

demo: venv
	$(PY) demo/run.py

bench: venv
	$(PY) bench/run.py
	$(PY) bench/failover.py --json bench-failover.json
	$(PY) bench/handover.py --json bench-handover.json

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
