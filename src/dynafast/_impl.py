"""The build switch: which implementation of each algorithm this process uses, decided once at import.

Every module in ``dynafast._core`` (Cython) has a twin in ``dynafast._ref`` (plain Python) with the same
public names; the same tests run against both. The rest of the package imports the chosen modules from
here (``from dynafast._impl import codec``) and never decides again.

``DYNAFAST_PURE=1`` takes the references. Otherwise each module is the compiled one when it is built, else
its reference; ``DYNAFAST_REQUIRE_COMPILED=1`` turns a missing build into an ImportError instead.
``BUILD`` says what was chosen: "compiled", "reference", or "mixed" when only some modules are built.
``compiled(name)`` and ``reference(name)`` give one build explicitly, for the tests that compare the two.
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


def _choose(name: str) -> ModuleType:
    if PURE:
        return reference(name)
    try:
        return compiled(name)
    except ImportError:
        if REQUIRE_COMPILED:
            raise
        return reference(name)


ring = _choose("ring")
vclock = _choose("vclock")
merkle = _choose("merkle")
logstore = _choose("logstore")
codec = _choose("codec")
resp = _choose("resp")
lane = _choose("lane")
peer = _choose("peer")


def _build_of(module: ModuleType) -> str:
    return "compiled" if module.__name__.startswith("dynafast._core.") else "reference"


BUILDS = {"ring": _build_of(ring), "vclock": _build_of(vclock), "merkle": _build_of(merkle),
          "logstore": _build_of(logstore), "codec": _build_of(codec), "resp": _build_of(resp),
          "lane": _build_of(lane), "peer": _build_of(peer)}
BUILD = BUILDS["ring"] if len(set(BUILDS.values())) == 1 else "mixed"
