import dynafast
from dynafast import errors


def test_errors_share_one_base():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), dynafast.DynafastError)


def test_impl_pure_switch_is_a_boolean():
    from dynafast import _impl

    assert isinstance(_impl.PURE, bool)
    assert isinstance(_impl.REQUIRE_COMPILED, bool)


def test_package_exports_every_error():
    assert set(errors.__all__) <= set(dynafast.__all__)
