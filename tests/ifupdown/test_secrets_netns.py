"""Under the real ifup: the password stays with the hook, the interfaces file that holds it is
judged, and what ifup was given cannot add lines to the files the hook writes."""

from __future__ import annotations

import shlex

import pytest
from ifnodes import PASSWORD, Lab, stanza

pytestmark = pytest.mark.netns

RECORDING_SYSTEMCTL = """\
#!/bin/sh
# stands in for systemctl: notes the environment it was run with
env > "{folder}/systemctl.$$.env"
[ "$1" = is-active ] && {{ echo inactive; exit 3; }}
exit 0
"""


def test_what_the_hook_runs_does_not_inherit_the_password(lab: Lab) -> None:
    node = lab.node()
    node.write_interfaces(stanza(1))
    # systemd as PID 1, as the hook sees it: it asks systemctl to start carpd@eth0
    (node.run_dir / "systemd" / "system").mkdir(parents=True)
    folder = node.home / "recorded"
    folder.mkdir()
    fake = node.home / "bin" / "systemctl"
    fake.write_text(RECORDING_SYSTEMCTL.format(folder=folder))
    fake.chmod(0o755)
    result = node.ifup("eth0")
    assert result.returncode == 0, result.stderr
    recorded = [path.read_text() for path in sorted(folder.iterdir())]
    assert len(recorded) >= 2  # is-active, reset-failed, start
    assert all("IF_UCARP_VID=7" in env for env in recorded)  # ifup's environment otherwise
    assert not [env for env in recorded if PASSWORD in env or "IF_UCARP_PASSWORD" in env]


def test_ifup_warns_when_the_password_sits_in_a_file_everyone_can_read(lab: Lab) -> None:
    node = lab.node()
    node.write_interfaces(stanza(1))
    node.interfaces.chmod(0o644)
    result = node.ifup("eth0")
    assert result.returncode == 0, result.stderr
    assert (f"carpd: iface eth0 inet static: warning: ucarp-password: {node.interfaces} is "
            "readable by every user (mode 644), so is the password: chmod o-r it, or move the "
            "password to a root-only file named by ucarp-passfile") in result.stderr
    assert PASSWORD not in result.stderr
    assert node.ifdown("eth0").returncode == 0

    node.interfaces.chmod(0o640)
    result = node.ifup("eth0")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr


def test_a_line_break_in_the_ifup_interfaces_path_is_refused(lab: Lab) -> None:
    node = lab.node()
    sneaky = node.home / "if\nLD_PRELOAD=evil.so"
    sneaky.write_text(stanza(1))
    command = shlex.join(["ifup", "-i", str(sneaky), "--state-dir", str(node.state), "eth0"])
    result = node.sh(command)
    assert result.returncode != 0
    assert (f"carpd: ifup -i/--interfaces: {str(sneaky)!r}: a line break in it cannot be "
            "passed on to the engine's scripts: allowed is a path without line breaks"
            ) in result.stderr
    assert not (node.run_dir / "carpd" / "eth0.env").exists()
    assert node.engines() == []
