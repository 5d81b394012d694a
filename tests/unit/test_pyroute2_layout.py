"""carpd loads pyroute2's few modules it needs without the package's heavy __init__; a pyroute2
whose modules are laid out otherwise must still work, through the whole package as usual."""

from __future__ import annotations

import subprocess
import sys

UNKNOWN_LAYOUT = """
import sys

class Elsewhere:
    '''pyroute2.iproute.linux cannot be imported on its own (only once __init__ has run)'''
    def find_spec(self, name, path=None, target=None):
        package = sys.modules.get("pyroute2")
        if name == "pyroute2.iproute.linux" and "__getattr__" in vars(package):
            raise ImportError("not here in this layout")
        return None

sys.meta_path.insert(0, Elsewhere())
from carpd.engine import netlink
from carpd.engine._pyroute2 import is_complete
assert is_complete(sys.modules["pyroute2"]), "fell back to the whole package"
print(netlink.IPRoute.__module__, netlink.interface_info("lo").index)
"""


def test_an_unknown_pyroute2_layout_falls_back_to_the_whole_package() -> None:
    result = subprocess.run([sys.executable, "-c", UNKNOWN_LAYOUT], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pyroute2.iproute.linux", "1"]
