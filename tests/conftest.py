"""Shared fixtures: run each algorithm's tests on the compiled build and on the plain-Python reference."""
import pytest

from dynafast import _impl


def implementations(name):
    """Parametrize a fixture over the compiled module and the reference of ``name``."""

    def fixture(request):
        if request.param == "compiled":
            try:
                return _impl.compiled(name)
            except ImportError:
                if _impl.REQUIRE_COMPILED:
                    raise
                pytest.skip(f"dynafast._core.{name} is not built")
        return _impl.reference(name)

    return pytest.fixture(params=["compiled", "reference"])(fixture)
