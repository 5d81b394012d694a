"""ifupdown glue: /etc/network/interfaces parsing, ``ucarp-*`` stanzas -> engine options, hooks.

- :mod:`carpd.ifupdown.interfaces`  the interfaces(5) parser (``carpctl check``)
- :mod:`carpd.ifupdown.stanza`      the ``ucarp-*`` options of one stanza -> :class:`Options`
- :mod:`carpd.ifupdown.groups`      several groups per interface: which stanzas, what may not clash
- :mod:`carpd.ifupdown.runtime`     /run/carpd/IFACE.* files, releasing the VIP of a dead engine
- :mod:`carpd.ifupdown.supervisor`  keeps one engine per interface running without systemd
- :mod:`carpd.ifupdown.hook`        what if-up.d/carpd and if-down.d/carpd do
- :mod:`carpd.ifupdown.main`        the ``carpd-ifupdown`` command tying them together
"""
