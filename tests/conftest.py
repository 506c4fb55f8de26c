"""Shared fixtures: run each algorithm's tests on the compiled build and on the plain-Python reference."""
import pytest

from dynafast import _impl
from dynafast.testing.builds import compiled_or_skip


def implementations(name):
    """Parametrize a fixture over the compiled module and the reference of ``name``."""

    def fixture(request):
        if request.param == "compiled":
            return compiled_or_skip(name)
        return _impl.reference(name)

    return pytest.fixture(params=["compiled", "reference"])(fixture)
