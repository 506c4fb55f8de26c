"""Wire protocol codec, on the compiled build and the plain-Python reference."""
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynafast import _impl
from dynafast.errors import ProtocolError

from conftest import implementations

impl = implementations("codec")

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    st.floats(allow_nan=False),
    st.binary(max_size=300),
    st.text(max_size=50),
)
FIELD = st.one_of(SCALARS, st.lists(SCALARS, max_size=8), st.lists(st.binary(max_size=120), max_size=8))
FIELDS = st.lists(FIELD, max_size=8)
MSG_TYPE = st.integers(min_value=0, max_value=255)
REQUEST_ID = st.integers(min_value=0, max_value=2**32 - 1)
HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _normal(fields):
    """What a decode gives back: tuples become lists, buffers become bytes."""
    out = []
    for value in fields:
        if isinstance(value, (list, tuple)):
            out.append([bytes(v) if isinstance(v, (bytearray, memoryview)) else v for v in value])
        elif isinstance(value, (bytearray, memoryview)):
            out.append(bytes(value))
        else:
            out.append(value)
    return tuple(out)


def _frame(length, version, msg_type, request_id, body=b""):
    return struct.pack(">IBBI", length, version, msg_type, request_id) + body


def _good(msg_type, request_id, body):
    return _frame(6 + len(body), 1, msg_type, request_id, body)


def test_constants(impl):
    assert impl.PROTOCOL_VERSION == 1
    assert impl.MAX_FRAME_DEFAULT == 64 * 1024 * 1024
    assert impl.HEADER_SIZE == 10


def test_header_layout(impl):
    data = impl.encode(12, 0x01020304, ())
    assert data == b"\x00\x00\x00\x06\x01\x0c\x01\x02\x03\x04"


def test_known_bytes(impl):
    # Pinned so that an accidental format change is caught (docs/protocol.md has the same example).
    data = impl.encode(11, 7, (None, True, False, -3, 1.5, b"ab", "h\u00e9", [b"x", b"yz"], [1, None]))
    body = (
        b"\x00\x02\x01"
        b"\x03\x05"
        b"\x04" + struct.pack(">d", 1.5) + b"\x05\x02ab"
        b"\x06\x03h\xc3\xa9"
        b"\x08\x02\x01x\x02yz"
        b"\x07\x02\x03\x02\x00"
    )
    assert data == _good(11, 7, body)


@HYP
@given(msg_type=MSG_TYPE, request_id=REQUEST_ID, fields=FIELDS)
def test_round_trip(impl, msg_type, request_id, fields):
    data = impl.encode(msg_type, request_id, fields)
    assert impl.Decoder().feed(data) == [(msg_type, request_id, _normal(fields))]


@HYP
@given(msg_type=MSG_TYPE, request_id=REQUEST_ID, fields=FIELDS)
def test_both_builds_identical(impl, msg_type, request_id, fields):
    ref = _impl.reference("codec")
    data = impl.encode(msg_type, request_id, fields)
    assert data == ref.encode(msg_type, request_id, fields)
    assert impl.Decoder().feed(data) == ref.Decoder().feed(data)


def test_nan_and_inf(impl):
    (_, _, (nan, inf, ninf, negzero)), = impl.Decoder().feed(impl.encode(2, 1, (math.nan, math.inf, -math.inf, -0.0)))
    assert math.isnan(nan) and inf == math.inf and ninf == -math.inf
    assert math.copysign(1.0, negzero) == -1.0


def test_buffers_and_tuples_accepted(impl):
    fields = (bytearray(b"ab"), memoryview(b"cd"), (b"e", bytearray(b"f"), memoryview(b"g")), (1, "x"))
    frames = impl.Decoder().feed(impl.encode(1, 1, fields))
    assert frames == [(1, 1, (b"ab", b"cd", [b"e", b"f", b"g"], [1, "x"]))]
    assert all(type(v) is bytes for v in frames[0][2][2])


def test_int_enum_and_int_subclass(impl):
    import enum

    class Kind(enum.IntEnum):
        A = 5

    assert impl.encode(Kind.A, 1, (Kind.A,)) == impl.encode(5, 1, (5,))


@pytest.mark.parametrize(
    "msg_type, request_id, fields, error",
    [
        (256, 1, (), OverflowError),
        (-1, 1, (), OverflowError),
        (1, 2**32, (), OverflowError),
        (1, -1, (), OverflowError),
        (1.0, 1, (), TypeError),
        (1, 1, (2**63,), OverflowError),
        (1, 1, (-(2**63) - 1,), OverflowError),
        (1, 1, ({"a": 1},), TypeError),
        (1, 1, ([[1]],), TypeError),
        (1, 1, ([b"a", [b"b"]],), TypeError),
        (1, 1, (object(),), TypeError),
        (1, 1, b"abc", TypeError),
        (1, 1, ("\ud800",), UnicodeEncodeError),
    ],
)
def test_encode_rejects(impl, msg_type, request_id, fields, error):
    with pytest.raises(error):
        impl.encode(msg_type, request_id, fields)


def test_encode_into_appends_and_is_atomic(impl):
    buf = bytearray()
    impl.encode_into(buf, 10, 1, (b"k",))
    impl.encode_into(buf, 11, 2, ([b"v1", b"v2"], b"ctx"))
    before = bytes(buf)
    with pytest.raises(TypeError):
        impl.encode_into(buf, 12, 3, (b"x" * 5000, object()))
    assert bytes(buf) == before  # a failed encode appends nothing
    assert impl.Decoder().feed(buf) == [(10, 1, (b"k",)), (11, 2, ([b"v1", b"v2"], b"ctx"))]


def test_large_value_round_trip(impl):
    value = bytes(range(256)) * 8000  # 2 MB, grows the scratch buffer past its keep size
    data = impl.encode(12, 9, (b"key", value))
    assert impl.Decoder().feed(data) == [(12, 9, (b"key", value))]
    assert impl.encode(2, 1, ()) == _good(2, 1, b"")  # and the scratch buffer still works afterwards


@HYP
@given(fields=st.lists(FIELDS, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_split_feeds(impl, fields, cuts):
    stream = b"".join(impl.encode(20 + i, i, f) for i, f in enumerate(fields))
    points = sorted({c % (len(stream) + 1) for c in cuts})
    decoder = impl.Decoder()
    got = []
    last = 0
    for point in points + [len(stream)]:
        got += decoder.feed(stream[last:point])
        last = point
    assert got == [(20 + i, i, _normal(f)) for i, f in enumerate(fields)]
    assert decoder.buffered == 0


def test_byte_by_byte(impl):
    frames = [(10, 1, (b"key", None)), (11, 2, ([b"a" * 100, b"b" * 100], b"c" * 40)), (2, 3, ())]
    stream = b"".join(impl.encode(*f) for f in frames)
    decoder = impl.Decoder()
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i:i + 1])
        if i < len(stream) - 1 and not got:
            assert decoder.buffered == i + 1
    assert got == frames
    assert decoder.buffered == 0


def test_feed_accepts_buffers(impl):
    data = impl.encode(3, 4, (b"x",))
    assert impl.Decoder().feed(bytearray(data)) == [(3, 4, (b"x",))]
    assert impl.Decoder().feed(memoryview(data)) == [(3, 4, (b"x",))]
    assert impl.Decoder().feed(b"") == []


MALFORMED_BODIES = [
    b"\x09",  # unknown tag
    b"\xff",  # unknown tag
    b"\x03",  # int without varint
    b"\x03\x80",  # truncated varint
    b"\x03" + b"\xff" * 9 + b"\x02",  # varint over 64 bits
    b"\x03" + b"\x80" * 10 + b"\x00",  # varint too long
    b"\x04\x00\x00\x00",  # truncated float
    b"\x05\x05abc",  # bytes longer than the frame
    b"\x05\xff\xff\xff\xff\x0f",  # huge bytes length
    b"\x06\x02\xff\xfe",  # invalid utf-8
    b"\x07\x05\x00",  # list count past the end
    b"\x07\x01\x07\x00",  # nested list
    b"\x07\x01\x08\x00",  # nested bytes list
    b"\x08\x02\x01a",  # bytes list missing an item
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\x7f",  # absurd count: must not allocate
    b"\x00\x00\x09",  # good fields then garbage
]


@pytest.mark.parametrize("body", MALFORMED_BODIES)
def test_malformed_body_keeps_stream_in_sync(impl, body):
    stream = impl.encode(2, 1, ("before",)) + _good(10, 77, body) + impl.encode(2, 2, ("after",))
    frames = impl.Decoder().feed(stream)
    assert len(frames) == 3
    assert frames[0] == (2, 1, ("before",))
    msg_type, request_id, error = frames[1]
    assert (msg_type, request_id) == (10, 77)
    assert isinstance(error, ProtocolError)
    assert frames[2] == (2, 2, ("after",))


def test_malformed_bodies_agree_between_builds(impl):
    ref = _impl.reference("codec")
    for body in MALFORMED_BODIES:
        a = impl.Decoder().feed(_good(1, 1, body))[0][2]
        b = ref.Decoder().feed(_good(1, 1, body))[0][2]
        assert type(a) is type(b) is ProtocolError
        assert str(a) == str(b)


def test_oversized_length_raises_before_body_arrives(impl):
    decoder = impl.Decoder(max_frame=1000)
    good = impl.encode(2, 1, (b"x",))
    with pytest.raises(ProtocolError) as info:
        decoder.feed(good + struct.pack(">I", 1001))  # only the length: it must not wait for 1001 bytes
    assert info.value.frames == [(2, 1, (b"x",))]
    with pytest.raises(ProtocolError):
        decoder.feed(good)  # the stream is dead
    assert impl.Decoder(max_frame=1000).feed(_good(1, 1, b"\x00" * 994)) == [(1, 1, (None,) * 994)]


def test_default_limit(impl):
    with pytest.raises(ProtocolError):
        impl.Decoder().feed(struct.pack(">I", impl.MAX_FRAME_DEFAULT + 1))


@pytest.mark.parametrize("header", [_frame(6, 2, 1, 1), _frame(6, 0, 1, 1), _frame(5, 1, 1, 1), _frame(0, 1, 1, 1)])
def test_bad_version_or_short_length_raises(impl, header):
    decoder = impl.Decoder()
    with pytest.raises(ProtocolError) as info:
        decoder.feed(header)
    assert info.value.frames == []


def test_bad_version_detected_before_body(impl):
    with pytest.raises(ProtocolError):
        impl.Decoder().feed(struct.pack(">IB", 100, 9))


def test_bad_header_after_buffered_tail(impl):
    decoder = impl.Decoder()
    data = impl.encode(5, 6, (b"abc",))
    assert decoder.feed(data[:3]) == []
    with pytest.raises(ProtocolError) as info:
        decoder.feed(data[3:] + _frame(6, 7, 1, 1))
    assert info.value.frames == [(5, 6, (b"abc",))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_random_bytes_never_crash_and_builds_agree(impl, data):
    ref = _impl.reference("codec")

    def run(module):
        try:
            frames = module.Decoder(max_frame=4096).feed(data)
        except ProtocolError as exc:
            return ("raised", [(t, r, f if not isinstance(f, Exception) else str(f)) for t, r, f in exc.frames])
        return [(t, r, f if not isinstance(f, Exception) else str(f)) for t, r, f in frames]

    assert run(impl) == run(ref)
