import os
import subprocess
import sys

import pytest

import dynafast
from dynafast import errors


def test_errors_share_one_base():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), dynafast.DynafastError)


def test_impl_pure_switch_is_a_boolean():
    from dynafast import _impl

    assert isinstance(_impl.PURE, bool)
    assert isinstance(_impl.REQUIRE_COMPILED, bool)


def test_impl_build_names_what_was_chosen():
    from dynafast import _impl

    for name, build in _impl.BUILDS.items():
        package = "dynafast._core" if build == "compiled" else "dynafast._ref"
        assert getattr(_impl, name).__name__ == f"{package}.{name}"
    assert _impl.BUILD == (_impl.BUILDS["ring"] if len(set(_impl.BUILDS.values())) == 1 else "mixed")


def _chosen(env):
    """(BUILD, module names) as a fresh interpreter with ``env`` set chooses them."""
    src = os.path.dirname(os.path.dirname(dynafast.__file__))
    env = {**os.environ, "DYNAFAST_PURE": "", "DYNAFAST_REQUIRE_COMPILED": "", **env}
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    code = "from dynafast import _impl as i; print(i.BUILD, *(getattr(i, n).__name__ for n in i.BUILDS))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    build, *modules = out.stdout.split()
    return build, modules


def test_impl_pure_takes_every_reference():
    build, modules = _chosen({"DYNAFAST_PURE": "1"})
    assert build == "reference"
    assert all(m.startswith("dynafast._ref.") for m in modules) and len(modules) == 8


def test_impl_require_compiled_takes_every_build():
    from dynafast import _impl

    try:
        for name in _impl.BUILDS:
            _impl.compiled(name)
    except ImportError:
        pytest.skip("the extensions are not built")
    build, modules = _chosen({"DYNAFAST_REQUIRE_COMPILED": "1"})
    assert build == "compiled"
    assert all(m.startswith("dynafast._core.") for m in modules) and len(modules) == 8


def test_package_exports_every_error():
    assert set(errors.__all__) <= set(dynafast.__all__)
