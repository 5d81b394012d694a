"""The track scripts of /usr/share/carpd/checks as the package installs them, on a booted Debian 13
(systemd as PID 1, trixie's python3): unit-active asks the real systemd, and an engine run as
carpd@eth0.service, sandbox and all, hands the VIP over when the unit it tracks stops."""

from __future__ import annotations

import time

from pkgtools import Booted, Node, Pair, Stage, record

CHECKS = "/usr/share/carpd/checks"


def booted(pair: Pair) -> tuple[Booted, Node]:
    a, b = pair.a, pair.b
    assert isinstance(a, Booted) and isinstance(b, Node)
    with Stage("checks: boot until networking.service is active"):
        a.wait_booted()
    return a, b


def per_run(a: Booted, command: str, runs: int = 20) -> float:
    """Seconds one run of command takes inside the container (the mean of runs)."""
    out = a.run("sh", "-c", f"s=$(date +%s%N); for i in $(seq {runs}); do {command} "
                ">/dev/null 2>&1; done; echo $(( $(date +%s%N) - s ))").output
    seconds = int(out.split()[-1]) / runs / 1e9
    print(f"{command}: {seconds * 1000:.1f} ms a run")
    return seconds


def test_unit_active_passes_for_a_running_unit_and_fails_for_a_missing_one(
        systemd_pair: Pair) -> None:
    a, _ = booted(systemd_pair)
    passed = a.run(f"{CHECKS}/unit-active", "systemd-journald.service", check=False)
    assert (passed.returncode, passed.output) == (0, "")
    failed = a.run(f"{CHECKS}/unit-active", "nonexistent.service", check=False)
    assert (failed.returncode, failed.output) == (1, "nonexistent.service is inactive\n")
    usage = a.run(f"{CHECKS}/unit-active", check=False)
    assert usage.returncode == 2 and usage.output.startswith("usage: unit-active UNIT")
    record("checks: one run of unit-active systemd-journald.service",
           per_run(a, f"{CHECKS}/unit-active systemd-journald.service"))


def test_the_python_checks_run_on_trixies_python_as_installed(systemd_pair: Pair) -> None:
    a, _ = booted(systemd_pair)
    for name in ("unit-active", "tcp-port", "http-url"):
        mode = (a.root / CHECKS.lstrip("/") / name).stat().st_mode & 0o7777
        assert mode == 0o755, f"{name}: {mode:o}"
    for name in ("tcp-port", "http-url"):
        shebang = (a.root / CHECKS.lstrip("/") / name).read_text().splitlines()[0]
        assert shebang == "#!/usr/bin/python3 -IS", shebang
    # in the container's network namespace (the test's own), where nothing listens on port 1
    refused = a.run(f"{CHECKS}/tcp-port", "1", check=False)
    assert (refused.returncode, refused.output) == (1, "127.0.0.1 port 1: Connection refused\n")
    refused = a.run(f"{CHECKS}/http-url", "http://127.0.0.1:1/", check=False)
    assert (refused.returncode, refused.output) == (
        1, "http://127.0.0.1:1/: Connection refused\n")
    assert a.run(f"{CHECKS}/http-url", "ftp://x/", check=False).returncode == 2
    per_run(a, "/usr/bin/python3 -IS -c pass")  # printed, to compare with
    for name, args in (("tcp-port", "1"), ("http-url", "http://127.0.0.1:1/")):
        record(f"checks: one run of {name} {args} (refused) on trixie's python3",
               per_run(a, f"{CHECKS}/{name} {args}"))


WEB_STANDIN = "[Unit]\nDescription=stand-in for nginx\n[Service]\nExecStart=/bin/sleep infinity\n"
TRACKING = f"""\
    ucarp-track-script {CHECKS}/unit-active web.service
    ucarp-track-interval 0.5
    ucarp-track-fall 2
    ucarp-track-rise 2
"""


def test_under_systemd_the_vip_leaves_the_master_whose_tracked_unit_stops_and_comes_back(
        systemd_pair: Pair) -> None:
    a, b = booted(systemd_pair)
    (a.root / "etc/systemd/system/web.service").write_text(WEB_STANDIN)
    a.run("systemctl", "daemon-reload")
    a.run("systemctl", "start", "web.service")
    interfaces = a.root / "etc/network/interfaces"
    stanza = interfaces.read_text()
    assert "    ucarp-master yes\n" in stanza
    interfaces.write_text(stanza.replace("    ucarp-master yes\n",
                                         "    ucarp-master yes\n" + TRACKING))
    a.run("systemctl", "restart", "networking.service")
    a.wait_unit()
    b.run("ifup", "eth0")
    systemd_pair.wait_holder(a, timeout=20)

    # the engine's check, run from inside carpd@eth0.service's sandbox, sees the unit stop
    stopped = time.monotonic()
    a.run("systemctl", "stop", "web.service")
    a.wait(b.holds, 10, "the VIP on the peer")
    record("checks: web.service stopped -> VIP on the peer (fall 2 x 0.5 s)",
           time.monotonic() - stopped)
    systemd_pair.wait_holder(b, timeout=10)  # and no longer on a, once it has drained
    status = a.run("carpctl", "status", check=False).output
    assert "unit-active web.service" in status and "web.service is inactive" in status, status

    # healthy again after rise passes: preempt (ucarp-master yes, advskew 0) takes it back
    a.run("systemctl", "start", "web.service")
    systemd_pair.wait_holder(a, timeout=15)
