"""carpd-engines (the package's restart/stop helper) waits for an engine as long as its slowest
group may take to stop: every group of a multi-group IFACE.conf counts, not the top level only."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "debian" / "carpd-engines"


def _engines() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("carpd_engines", str(SCRIPT))
    spec = importlib.util.spec_from_loader("carpd_engines", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["carpd_engines"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


def test_a_flat_conf_gives_its_drain_and_script_timeout() -> None:
    assert _engines().conf_budget({"drain": 5, "script_timeout": 10}) == 15.0


def test_a_groups_conf_gives_its_slowest_group() -> None:
    data = {"interface": "eth0", "groups": [
        {"vhid": 1, "drain": 2, "script_timeout": 30},
        {"vhid": 2, "drain": 120, "script_timeout": 60}]}
    assert _engines().conf_budget(data) == 180.0


def test_defaults_are_the_engines_defaults() -> None:
    assert _engines().conf_budget({"groups": [{"vhid": 1}]}) == 32.0


def test_its_run_folder_is_carpds_own() -> None:
    # standard library only (it runs while the package is half installed): its own copy of
    # the one run folder constant, which must not drift from it
    from carpd.debian.ifupdown import runtime
    from carpd.engine.identity import RUN_DIR

    assert Path(_engines().RUN_DIR) == RUN_DIR == runtime.RUN_DIR


def test_drain_connections_lengthens_the_budget_to_its_cap() -> None:
    data = {"groups": [{"vhid": 1, "drain": 2, "drain_connections": 600, "script_timeout": 30},
                       {"vhid": 2, "drain": 90, "drain_connections": 10, "script_timeout": 30}]}
    assert _engines().conf_budget(data) == 630.0
