"""The .deb built from this tree: what it holds, how it relates to other packages, and what
lintian (Debian 12's on the build host, Debian 13's in the target) says about it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pkgtools import REPO, Built, Stage, in_root, run

# run-parts (as ifupdown calls it) only runs names made of these
RUN_PARTS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def contents(deb: Path) -> dict[str, str]:
    """{path: mode string} of the files in a .deb."""
    listing = run(["dpkg-deb", "--contents", str(deb)]).output
    found = {}
    for line in listing.splitlines():
        parts = line.split()
        path = parts[5].removeprefix(".")
        found[path] = parts[0]
    return found


def control(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "--field", str(deb), field]).output.strip()


def control_file(deb: Path, name: str) -> str:
    """A file of the control archive (postinst, conffiles, ...)."""
    return run(["sh", "-c", 'dpkg-deb --ctrl-tarfile "$1" | tar -xOf - "./$2"', "sh", str(deb),
                name]).output


def test_build_leaves_the_repository_clean(built: Built) -> None:
    for leftover in ("debian/carpd", "debian/.debhelper", "debian/files", "debian/tmp",
                     "debian/debhelper-build-stamp", "debian/carpd.substvars", ".pybuild",
                     "build"):
        assert not (REPO / leftover).exists(), leftover
    assert not list(REPO.parent.glob("carpd_*.deb"))


def test_package_installs_commands_hooks_docs_and_man_pages(built: Built) -> None:
    files = contents(built.deb)
    for path in ("/usr/sbin/carpd", "/usr/sbin/carpctl", "/usr/libexec/carpd/engines"):
        assert files[path].startswith("-rwxr-xr-x"), path
    for check in ("unit-active", "tcp-port", "http-url"):
        assert files[f"/usr/share/carpd/checks/{check}"] == "-rwxr-xr-x", check
    assert "/usr/share/doc/carpd/nginx-pair.md.gz" in files  # dh_compress: over 4 kB
    for phase in ("up", "down"):
        hook = f"/etc/network/if-{phase}.d/carpd"
        assert files[hook] == "-rwxr-xr-x", hook
        assert RUN_PARTS_NAME.match(Path(hook).name)
    for path in ("/usr/share/man/man8/carpd.8.gz", "/usr/share/man/man8/carpctl.8.gz",
                 "/usr/share/doc/carpd/copyright",
                 "/usr/share/doc/carpd/changelog.Debian.gz",
                 "/usr/lib/python3/dist-packages/carpd/debian/debian_status.py"):
        assert path in files, path
    # dh_compress compresses documents over 4 kB
    assert {"/usr/share/doc/carpd/README.Debian",
            "/usr/share/doc/carpd/README.Debian.gz"} & set(files)
    assert control_file(built.deb, "conffiles").split() == [
        "/etc/network/if-down.d/carpd", "/etc/network/if-up.d/carpd"]


def test_package_picks_up_the_trees_hooks_scripts_and_units(built: Built) -> None:
    files = contents(built.deb)
    for phase in ("up", "down"):
        if (REPO / f"if-{phase}.d/carpd").is_file():
            assert files[f"/usr/libexec/carpd/if-{phase}"] == "-rwxr-xr-x"
    for script in ("vip-up", "vip-down"):
        if (REPO / "share" / script).is_file():
            assert files[f"/usr/share/carpd/{script}"] == "-rwxr-xr-x"
    for unit in sorted((REPO / "systemd").glob("*.service")) if (REPO / "systemd").is_dir() \
            else []:
        assert files[f"/usr/lib/systemd/system/{unit.name}"] == "-rw-r--r--"


def test_template_units_are_not_enabled_or_started_at_install(built: Built) -> None:
    templates = [Path(path).name for path in contents(built.deb)
                 if re.fullmatch(r"/usr/lib/systemd/system/[^/]+@\.service", path)]
    if not templates:
        pytest.skip("the tree has no systemd template unit yet (systemd/*@.service)")
    scripts = {name: "\n".join(line for line in control_file(built.deb, name).splitlines()
                                if not line.lstrip().startswith("#"))
               for name in ("postinst", "prerm", "postrm")}
    for template in templates:
        stem = template.removesuffix(".service")
        for name, text in scripts.items():
            assert stem not in text, f"{name} acts on {template}"


def test_relations_name_trixies_packages_and_conflict_with_ucarp_and_ifupdown2(
        built: Built) -> None:
    depends = [item.strip() for item in control(built.deb, "Depends").split(",")]
    for wanted in ("python3-pydantic (>= 2.10)", "python3-pyroute2 (>= 0.7.7)",
                   "python3-debian (>= 1.0.1)", "iproute2", "ifupdown (>= 0.8)",
                   "libnftables1"):
        assert wanted in depends
    assert control(built.deb, "Conflicts") == "ifupdown2, ucarp"
    assert control(built.deb, "Architecture") == "all"
    assert control(built.deb, "Section") == "net"
    assert control(built.deb, "Version") == "0.2.0-1"


# Every tag is shown; the run must show none (but overridden ones, each with its reason in
# debian/carpd.lintian-overrides). --fail-on stops at warnings: lintian 2.116 exits 2 for
# "info" whenever a masked tag exists, even though it shows nothing.
LINTIAN = ["lintian", "--pedantic", "--display-info", "--display-experimental",
           "--fail-on", "error,warning"]


def test_lintian_pedantic_on_debian_12_reports_nothing(built: Built) -> None:
    # Debian 12's lintian knows Standards-Version 4.6.2 at most; the package targets Debian 13,
    # whose lintian asks for 4.7.2 (checked below).
    with Stage("lintian --pedantic (bookworm's, on the host)"):
        result = run([*LINTIAN, "--suppress-tags", "newer-standards-version",
                      str(built.changes), str(built.dsc)], check=False)
    tags = [line for line in result.output.splitlines() if re.match(r"^[EWIPXON]: ", line)]
    assert tags == [] and result.returncode == 0, result.output


def test_lintian_pedantic_on_debian_13_reports_nothing(built: Built,
                                                       trixie_lintian: Path) -> None:
    with Stage("lintian --pedantic (trixie's, in the chroot)"):
        result = in_root(trixie_lintian, ["setpriv", "--reuid=nobody", "--regid=nogroup",
                                          "--clear-groups", "env", "HOME=/tmp",
                                          *LINTIAN, f"/tmp/{built.changes.name}",
                                          f"/tmp/{built.dsc.name}"],
                         check=False)
    tags = [line for line in result.output.splitlines() if re.match(r"^[EWIPXON]: ", line)]
    assert tags == [] and result.returncode == 0, result.output
