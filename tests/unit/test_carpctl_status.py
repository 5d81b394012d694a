"""`carpctl status` shows configured engines that are not running, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from carpd import carpctl


def test_a_configured_engine_that_does_not_run_is_listed_with_the_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "eth9.conf").write_text("{}\n")
    (tmp_path / "eth9.log").write_text(
        "12:00:01 carpd-supervisor[eth9]: the engine exited (exit status 1): starting it "
        "again in 8 s\n")
    code = carpctl.main(["--state-dir", str(tmp_path), "--dpkg-status", "/nonexistent",
                         "status"])
    out = capsys.readouterr().out
    assert code == 1
    assert "eth9" in out and "NOT RUNNING" in out
    if not Path("/run/systemd/system").is_dir():
        assert "the engine exited (exit status 1)" in out


def test_an_interface_with_no_engine_configured_is_not_listed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = carpctl.main(["--state-dir", str(tmp_path), "--dpkg-status", "/nonexistent",
                         "status"])
    assert code == carpctl.EXIT_NO_ENGINE
    assert "NOT RUNNING" not in capsys.readouterr().out
