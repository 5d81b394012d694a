# carpd: the two commands README.md starts with are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := $(shell grep -v '^\s*\#' .ci/apt-packages)

.PHONY: deps venv lint unit test demo bench fuzz clean pyroute2-08 settings man

FUZZ_FRAMES ?= 1000000
FUZZ_SEED ?= 20261201

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

# Python scripts without .py; mypy checks them too (pyproject.toml's [tool.mypy] files: src/carpd,
# lab, bench, demo, fuzz and these).
PY_SCRIPTS := debian/carpd-engines debian/carpd-migrate share/checks/http-url share/checks/tcp-port

lint: venv
	$(VENV)/bin/ruff check src tests bench demo lab fuzz $(PY_SCRIPTS)
	$(VENV)/bin/mypy

# The engine's side of the option table, written from it: src/carpd/engine/settings.py's
# Settings and PER_ENGINE_KEYS (the engine never loads pydantic, so it cannot read the table).
# Adding an option is a field in src/carpd/config/options.py, then `make settings man`
# (tests/unit/test_option_table.py fails until then).  This tree's sources, not the venv's.
settings: venv
	PYTHONPATH=src $(PY) -m carpd.config.write_settings

# The man pages' option lists, written from the same table: debian/carpd.8's and
# debian/carpd-interfaces.5's OPTIONS entries (committed: the package's build never runs this).
man: venv
	PYTHONPATH=src $(PY) -m carpd.config.write_man

unit: venv
	$(PY) -m pytest -q tests/unit

# The netlink-heavy slice again on pyroute2 0.8 (Debian forky's; `make pyroute2-08` runs more).
COMPAT_SLICE := tests/unit tests/engine/test_link_events.py tests/engine/test_health_monitor.py \
	tests/engine/test_engine.py tests/integration/test_carpd_on_the_wire.py

test: venv lint
	$(PY) -m pytest -q -ra tests
	CARPD_COMPAT_TESTS="$(COMPAT_SLICE)" tests/compat/run_pyroute2_08.sh

# The lab, the benchmarks, the demo and the fuzzer are packages run as modules from here
# (python -m bench.failover): they import each other as lab.netns, bench.common...
demo: venv
	$(PY) -m demo.run

bench: venv
	$(PY) -m bench.run
	$(PY) -m bench.failover --json bench-failover.json
	$(PY) -m bench.handover --json bench-handover.json
	$(PY) -m bench.flood --json bench-flood.json
	$(PY) -m bench.lossy --json bench-lossy.json
	$(PY) -m bench.parse --json bench-parse.json
	$(PY) -m bench.faults --json bench-faults.json
	$(PY) -m bench.health --json bench-health.json
	$(PY) -m bench.longconn --json bench-longconn.json
	$(PY) -m bench.scale --json bench-scale.json

# A million frames through decoding and the election core, invariants checked after each call
# (make test runs a 20,000-frame slice: tests/unit/test_fuzz_slice.py).
fuzz: venv
	$(PY) -m fuzz.fuzz_core --frames $(FUZZ_FRAMES) --seed $(FUZZ_SEED)

# The unit, engine and on-the-wire tests against pyroute2 0.8 (Debian forky's), in a venv of its own.
pyroute2-08: venv
	tests/compat/run_pyroute2_08.sh

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
