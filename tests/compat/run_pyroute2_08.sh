#!/bin/sh
# carpd against pyroute2 0.8 (Debian forky and sid ship 0.8.1, a rewrite over asyncio): the unit,
# engine and on-the-wire tests, in a venv of their own beside the trixie one (.venv, 0.7.7).
#
#   tests/compat/run_pyroute2_08.sh [PYTEST ARGS...]
#
# The venv is $CARPD_VENV08 (default /tmp/venv08), made and filled here when missing; the other
# packages are at trixie's versions, as in requirements-ci.txt.  The engine and wire tests need
# root, network namespaces and Debian's ucarp, as under `make test`; they skip, saying why,
# without them.  Exits with pytest's status.
set -eu

venv=${CARPD_VENV08:-/tmp/venv08}
tree=$(cd "$(dirname "$0")/../.." && pwd)

if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q 'pyroute2==0.8.*' 'pydantic==2.10.*' 'python-debian==1.0.1' \
    'prometheus-client==0.21.1' pytest
"$venv/bin/python" - <<'PY'
import importlib.metadata
version = importlib.metadata.version("pyroute2")
assert version.startswith("0.8."), f"pyroute2 {version} in the venv, not 0.8"
print(f"pyroute2 {version}")
PY

cd "$tree"
# CARPD_COMPAT_TESTS narrows the run (`make test` runs the netlink-heavy slice)
tests=${CARPD_COMPAT_TESTS:-tests/unit tests/engine tests/integration/test_carpd_on_the_wire.py}
# shellcheck disable=SC2086
PYTHONPATH="$tree/src" exec "$venv/bin/python" -m pytest -q -p no:cacheprovider $tests "$@"
