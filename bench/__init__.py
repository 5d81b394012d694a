"""Benchmarks, carpd against ucarp in the same run.  Each runs as a module from the repository
root, e.g. ``.venv/bin/python -m bench.failover --quick`` (``make bench`` runs them all)."""
