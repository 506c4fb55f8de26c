"""Which build a test runs: the compiled twin of a module, or a skip where it is not built."""
import pytest

from dynafast import _impl


def compiled_or_skip(name: str):
    """``dynafast._core.<name>``; the test is skipped when it is not built, and fails instead when a compiled build
    is required (``DYNAFAST_REQUIRE_COMPILED=1``, as CI sets it)."""
    try:
        return _impl.compiled(name)
    except ImportError:
        if _impl.REQUIRE_COMPILED:
            raise
        pytest.skip(f"dynafast._core.{name} is not built")
