"""What dpkg says is installed: which ifupdown runs this host's hooks, and which version.

carpd's hooks behave differently under Debian's two ifupdown implementations (ifupdown2 runs
them with ``PHASE=up``/``down``, keeps the prefix in ``IF_ADDRESS`` and merges ``IFACE:ucarp``
stanzas into ``IFACE``), so ``carpctl`` reports which one is installed. The answer comes from
dpkg's own database, ``/var/lib/dpkg/status``, read with python-debian's ``deb822`` parser
(python-debian 1.0.1, Debian 13's version), not from probing commands on ``PATH``.

Use::

    from carpd.debian.debian_status import ifupdown_status

    status = ifupdown_status()            # or ifupdown_status(Path("fixture/status"))
    status.flavour                        # "ifupdown", "ifupdown2" or None
    status.ifupdown, status.ifupdown2     # InstalledPackage or None for each
    status.ifupdown.version               # e.g. "0.8.44"
    status.at_least("ifupdown", "0.8.36") # Debian version comparison

A package counts as installed when dpkg has configured it (its Status ends in ``installed``,
``triggers-awaiting`` or ``triggers-pending``: the states in which dpkg takes it to satisfy a
dependency). One removed but not purged (``config-files``) or half installed does not count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from debian import deb822
from debian.debian_support import version_compare

DPKG_STATUS = Path("/var/lib/dpkg/status")
IFUPDOWN_PACKAGES = ("ifupdown", "ifupdown2")

# dpkg states (the third word of Status) in which a package satisfies dependencies
_CONFIGURED = frozenset({"installed", "triggers-awaiting", "triggers-pending"})


@dataclass(frozen=True)
class InstalledPackage:
    """One package dpkg has configured: its name, Debian version and architecture."""

    name: str
    version: str
    architecture: str


@dataclass(frozen=True)
class IfupdownStatus:
    """Which of ifupdown and ifupdown2 dpkg has installed (each ``None`` when it has not)."""

    ifupdown: InstalledPackage | None
    ifupdown2: InstalledPackage | None

    @property
    def flavour(self) -> str | None:
        """The implementation that runs the hooks: "ifupdown2" wins if dpkg lists both."""
        if self.ifupdown2 is not None:
            return "ifupdown2"
        if self.ifupdown is not None:
            return "ifupdown"
        return None

    def at_least(self, name: str, version: str) -> bool:
        """True if package ``name`` (ifupdown or ifupdown2) is installed at ``version`` or newer,
        compared as dpkg compares versions."""
        if name not in IFUPDOWN_PACKAGES:
            raise ValueError(f"{name!r}: not one of {', '.join(IFUPDOWN_PACKAGES)}")
        package = self.ifupdown if name == "ifupdown" else self.ifupdown2
        return package is not None and version_compare(package.version, version) >= 0


def installed_packages(names: Iterable[str],
                       status_file: Path = DPKG_STATUS) -> dict[str, InstalledPackage]:
    """The packages among ``names`` that dpkg has configured, read from ``status_file``.

    A name dpkg does not know, or knows in another state, is absent from the result. For a
    multi-arch package installed for several architectures, the first stanza wins. Raises
    OSError if the file cannot be read.
    """
    wanted = set(names)
    found: dict[str, InstalledPackage] = {}
    with open(status_file, encoding="utf-8", errors="replace") as f:
        for paragraph in deb822.Deb822.iter_paragraphs(
                f, fields=["Package", "Status", "Version", "Architecture"]):
            name = paragraph.get("Package", "")
            if name not in wanted or name in found:
                continue
            words = paragraph.get("Status", "").split()
            if len(words) != 3 or words[2] not in _CONFIGURED:
                continue
            found[name] = InstalledPackage(name=name, version=paragraph.get("Version", ""),
                                           architecture=paragraph.get("Architecture", ""))
    return found


def ifupdown_status(status_file: Path = DPKG_STATUS) -> IfupdownStatus:
    """Whether ifupdown and/or ifupdown2 are installed on this host, and their versions."""
    found = installed_packages(IFUPDOWN_PACKAGES, status_file)
    return IfupdownStatus(ifupdown=found.get("ifupdown"), ifupdown2=found.get("ifupdown2"))
