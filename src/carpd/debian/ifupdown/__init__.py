"""ifupdown glue: /etc/network/interfaces parsing, ``ucarp-*`` stanzas -> engine options, hooks.

- :mod:`carpd.debian.ifupdown.interfaces`  the interfaces(5) parser (``carpctl check``)
- :mod:`carpd.debian.ifupdown.stanza`      the ``ucarp-*`` options of one stanza -> :class:`Options`
- :mod:`carpd.debian.ifupdown.groups`      several groups per interface: which stanzas, what may
                                           not clash
- :mod:`carpd.debian.ifupdown.runtime`     /run/carpd/IFACE.* files, releasing the VIP of a dead
                                           engine
- :mod:`carpd.debian.ifupdown.supervisor`  keeps one engine per interface running without systemd
- :mod:`carpd.debian.ifupdown.hook`        what if-up.d/carpd and if-down.d/carpd do
- :mod:`carpd.debian.ifupdown.main`        the ``carpd-ifupdown`` command tying them together
"""
