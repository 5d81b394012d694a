"""The files the package installs: the systemd unit parses, the hooks and actions are sound."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ifnodes import ROOT, Lab

UNIT = ROOT / "systemd" / "carpd@.service"
RETRY_UNIT = ROOT / "systemd" / "carpd-retry@.service"


def _verify(lab: Lab, unit: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (package systemd, see .ci/apt-packages)")
    node = lab.node()
    folder = node.home / "units"
    folder.mkdir()
    name = unit.name.replace("@.", "@eth0.") if "@." in unit.name else "carpd@eth0.service"
    (folder / name).write_text(unit.read_text())
    # The unit names the commands where the package installs them, and verify checks that
    # they are executable: the node has /usr/libexec/carpd/carpd-ifupdown; its wrappers are
    # overlaid on /usr/sbin too.
    overlay = f"mount -t overlay overlay -o lowerdir={node.home / 'bin'}:/usr/sbin /usr/sbin"
    return node.sh(f"{overlay} && "
                   f"SYSTEMD_LOG_LEVEL=info systemd-analyze verify --man=no {folder / name}")


NEWER_THAN_DEBIAN_12 = ("RestartSteps", "RestartMaxDelaySec", "RestartMode")
"""systemd 254 keys: Debian 13 (the target, systemd 257) knows them; Debian 12's 252 ignores
them with a warning (the unit still works there, restarting at a fixed RestartSec)."""


def _systemd_version() -> int:
    out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout
    return int(out.split()[1])


def _unknown_to_this_systemd(stderr: str) -> str:
    if _systemd_version() >= 254:
        return stderr
    return "".join(line + "\n" for line in stderr.splitlines()
                   if not any(f"Unknown key '{key}'" in line for key in NEWER_THAN_DEBIAN_12))


@pytest.mark.netns
@pytest.mark.parametrize("unit", [UNIT, RETRY_UNIT], ids=lambda u: u.name)
def test_the_systemd_units_verify_cleanly(lab: Lab, unit: Path) -> None:
    result = _verify(lab, unit)
    stderr = _unknown_to_this_systemd(result.stderr)
    assert (result.returncode, result.stdout, stderr) == (0, "", "")


@pytest.mark.netns
def test_unit_verification_does_catch_mistakes(lab: Lab, tmp_path: Path) -> None:
    broken = tmp_path / "broken.service"
    broken.write_text(UNIT.read_text().replace("KillMode=mixed", "KillMode=sometimes"))
    assert "Failed to parse kill mode" in _verify(lab, broken).stderr


@pytest.mark.parametrize("script", ["if-up.d/carpd", "if-down.d/carpd", "share/vip-up",
                                    "share/vip-down"])
def test_shell_scripts_are_executable_posix_sh(script: str) -> None:
    path = ROOT / script
    assert path.stat().st_mode & 0o111 == 0o111
    assert path.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(path)], check=True)


def test_hooks_are_the_same_for_up_and_down() -> None:
    assert (ROOT / "if-up.d/carpd").read_text() == (ROOT / "if-down.d/carpd").read_text()


def test_vip_up_passes_the_ifup_files_on_with_spaces_intact(tmp_path: Path) -> None:
    log = tmp_path / "args"
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("ifup", "ifdown"):
        (fake / name).write_text(f'#!/bin/sh\nprintf "%s|" {name} "$@" > {log}\n')
        (fake / name).chmod(0o755)
    (fake / "ifquery").write_text("#!/bin/sh\nexit 0\n")  # the alias is up
    (fake / "ifquery").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "CARPD_IFUPDOWN_INTERFACES": "/etc/my net/if",
           "CARPD_IFUPDOWN_STATE_DIR": "/run/st"}
    subprocess.run([ROOT / "share/vip-up", "eth0", "10.0.0.1", "x"], env=env, check=True)
    assert log.read_text() == "ifup|-i|/etc/my net/if|--state-dir|/run/st|--|eth0:ucarp|"
    subprocess.run([ROOT / "share/vip-down", "eth0", "10.0.0.1"], env={"PATH": env["PATH"]},
                   check=True)
    assert log.read_text() == "ifdown|--|eth0:ucarp|"


def test_vip_down_does_nothing_when_the_alias_is_not_up(tmp_path: Path) -> None:
    log = tmp_path / "args"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ifdown").write_text(f'#!/bin/sh\nprintf "%s|" ifdown "$@" > {log}\n')
    (fake / "ifquery").write_text("#!/bin/sh\nexit 1\n")
    for name in ("ifdown", "ifquery"):
        (fake / name).chmod(0o755)
    subprocess.run([ROOT / "share/vip-down", "eth0", "10.0.0.1"],
                   env={"PATH": f"{fake}:/usr/bin:/bin"}, check=True)
    assert not log.exists()


def _exposure(tmp_path: Path, *parts: Path) -> float:
    """systemd-analyze's exposure rating of carpd@eth0.service made of ``parts`` (the unit,
    then drop-ins: their [Service] lines appended, as systemd merges them)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (package systemd, see .ci/apt-packages)")
    text = parts[0].read_text() + "".join(
        "\n" + "\n".join(line for line in part.read_text().splitlines()
                         if line.strip() != "[Service]") for part in parts[1:])
    unit = tmp_path / "carpd@eth0.service"
    unit.write_text(text)
    out = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, check=False).stdout
    match = re.search(r"exposure level for .*: (\d+\.\d)", out)
    assert match, out
    return float(match[1])


def test_systemd_analyze_rates_the_sandboxed_unit_at_most_7(tmp_path: Path) -> None:
    assert _exposure(tmp_path, UNIT) <= 7.0


def test_the_strict_drop_in_brings_the_rating_down_to_at_most_2_5(tmp_path: Path) -> None:
    assert _exposure(tmp_path, UNIT, ROOT / "systemd" / "strict.conf") <= 2.5


@pytest.mark.parametrize("setting", [
    "LimitCORE=0", "UMask=0077", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
    "ProtectClock=yes", "LockPersonality=yes", "RestrictRealtime=yes",
    "SystemCallArchitectures=native"])
def test_the_unit_sets(setting: str) -> None:
    assert setting in UNIT.read_text().splitlines()


@pytest.mark.parametrize("setting", ["ProtectSystem=strict", "ProtectSystem=full",
                                     "PrivateTmp=yes", "PrivateDevices=yes",
                                     "ProtectKernelTunables=yes", "NoNewPrivileges=yes"])
def test_the_unit_leaves_the_scripts_what_they_may_need(setting: str) -> None:
    assert setting not in UNIT.read_text().splitlines()
