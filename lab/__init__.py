"""The lab shared by the tests, the benchmarks and the demo, one module per concern:

- :mod:`lab.netns`    the throw-away test network: :class:`~lab.netns.Switch` (the one
  namespaces-and-bridge builder), :class:`~lab.netns.Host` (what every lab's node is to the
  host), :class:`~lab.netns.Network` with carpd/ucarp daemons and a kernel-timestamped capture;
- :mod:`lab.poll`     ``wait_for``, the one poll helper (raises ``Timeout`` naming what it awaited);
- :mod:`lab.rootfs`   debootstrapped trixie roots, one builder and one cache, and their overlays;
- :mod:`lab.booted`   a root booted with systemd-nspawn in a lab namespace;
- :mod:`lab.tree`     this source tree and its commands (pyproject.toml's ``[project.scripts]``);
- :mod:`lab.replay`, :mod:`lab.attacker`   hostile nodes.

Imported as a package from the repository root: pytest puts the root on ``sys.path``
(pyproject.toml's ``pythonpath``), and the benchmarks and the demo run as modules from it
(``python -m bench.failover``, ``python -m demo.run``).
"""
