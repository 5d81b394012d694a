"""The lab shared by the tests, the benchmarks and the demo: a throw-away test network in network
namespaces (:mod:`lab.netns`) and hostile nodes (:mod:`lab.replay`, :mod:`lab.attacker`).

Imported as a package from the repository root: pytest puts the root on ``sys.path``
(pyproject.toml's ``pythonpath``), and the benchmarks and the demo run as modules from it
(``python -m bench.failover``, ``python -m demo.run``).
"""
