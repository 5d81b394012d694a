"""Unit tests of the pure core: carpd.wire against captured ucarp frames, carpd.election on a fake
clock and an in-memory link.  Nothing here touches the network, the clock or /work/shared."""

import pytest

# The helper modules hold assertions too (the simulated link checks every timer it fires).
pytest.register_assert_rewrite("cluster", "frames")
