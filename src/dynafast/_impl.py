"""Pick the compiled extension of an algorithm or its plain-Python reference.

Every module in ``dynafast._core`` (Cython) has a twin in ``dynafast._ref`` (plain Python) with the same
public names; the same tests run against both. ``DYNAFAST_PURE=1`` forces the references, and
``DYNAFAST_REQUIRE_COMPILED=1`` turns a missing build into an ImportError instead of a silent fallback.
"""
import importlib
import os
from types import ModuleType

PURE = os.environ.get("DYNAFAST_PURE", "") not in ("", "0")
REQUIRE_COMPILED = os.environ.get("DYNAFAST_REQUIRE_COMPILED", "") not in ("", "0")


def compiled(name: str) -> ModuleType:
    """The compiled module ``dynafast._core.<name>`` (ImportError when it is not built)."""
    return importlib.import_module(f"dynafast._core.{name}")


def reference(name: str) -> ModuleType:
    """The plain-Python reference ``dynafast._ref.<name>``."""
    return importlib.import_module(f"dynafast._ref.{name}")


def load(name: str) -> ModuleType:
    """The implementation to use: compiled unless forced pure or not built."""
    if PURE:
        return reference(name)
    try:
        return compiled(name)
    except ImportError:
        if REQUIRE_COMPILED:
            raise
        return reference(name)
