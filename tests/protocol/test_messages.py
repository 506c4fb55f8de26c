"""The message schema: every message's record round-trips through the codec (both builds), and parse names the
message and the field when the count or a type is wrong."""
import pytest

from dynafast.errors import ProtocolError, QuorumNotMet, TooManySiblings
from dynafast.net import messages
from dynafast.net.messages import SCHEMA, Msg, UnknownMessage, fields_of, parse, parse_reply

from conftest import implementations

impl = implementations("codec")

SAMPLE = {"bytes": b"\x00value", "str": "n1", "int": 7, "bool": True}
# A value of another type for each type; a bool must not pass for an int, nor an int for a bool.
WRONG = {"bytes": "text", "str": b"bytes", "int": True, "bool": 1}


def sample(type_name: str):
    if type_name.endswith(" or None"):
        return sample(type_name[:-len(" or None")])
    if type_name.startswith("list of "):
        item = SAMPLE[type_name[len("list of "):]]
        return [item, item]
    return SAMPLE[type_name]


def full(msg) -> tuple:
    """Every field of ``msg`` with a value (None for nothing)."""
    return tuple(sample(f.type) for f in fields_of(SCHEMA[msg]))


def minimal(msg) -> tuple:
    """Only the required fields; the nullable ones as None."""
    return tuple(None if f.type.endswith(" or None") else sample(f.type)
                 for f in fields_of(SCHEMA[msg]) if f.required)


ALL = list(Msg)


def test_every_message_type_has_a_record():
    assert set(SCHEMA) == set(Msg)
    for record in SCHEMA.values():
        assert issubclass(record, tuple) and hasattr(record, "_fields")


@pytest.mark.parametrize("msg", ALL, ids=lambda m: m.name)
def test_records_round_trip_through_the_codec(impl, msg):
    record = SCHEMA[msg](*full(msg))
    data = impl.encode(msg, 9, record)
    assert data == impl.encode(msg, 9, tuple(record)), "a record encodes as the plain tuple would"
    [(msg_type, request_id, fields)] = impl.Decoder().feed(data)
    parsed = parse(msg_type, fields)
    assert type(parsed) is SCHEMA[msg] and parsed == record


@pytest.mark.parametrize("msg", ALL, ids=lambda m: m.name)
def test_optional_fields_left_off_the_end_read_as_none(impl, msg):
    fields = minimal(msg)
    [(msg_type, _, decoded)] = impl.Decoder().feed(impl.encode(msg, 1, fields))
    record = parse(msg_type, decoded)
    spec = fields_of(SCHEMA[msg])
    assert tuple(record) == fields + (None,) * (len(spec) - len(fields))
    for count in range(len(fields), len(spec) + 1):  # any number of optional fields may be sent
        assert parse(msg, full(msg)[:count])[:count] == full(msg)[:count]


@pytest.mark.parametrize("msg", ALL, ids=lambda m: m.name)
def test_a_missing_required_field_is_named(msg):
    required = [f for f in fields_of(SCHEMA[msg]) if f.required]
    for count, field in enumerate(required):
        with pytest.raises(ProtocolError, match=rf"malformed {msg.name}\b.*field '{field.name}' is missing"):
            parse(msg, minimal(msg)[:count])


@pytest.mark.parametrize("msg", ALL, ids=lambda m: m.name)
def test_fields_beyond_the_record_are_ignored(msg):
    assert parse(msg, full(msg) + ("from a newer sender", 1)) == full(msg)


@pytest.mark.parametrize("msg", ALL, ids=lambda m: m.name)
def test_a_field_of_the_wrong_type_is_named(msg):
    for i, field in enumerate(fields_of(SCHEMA[msg])):
        base = field.type.removesuffix(" or None")
        wrong = [None] if base == field.type else []  # None only where the type does not allow it
        if base.startswith("list of "):
            item = base[len("list of "):]
            wrong += [SAMPLE[item], [SAMPLE[item], WRONG[item]], [[SAMPLE[item]]]]
        else:
            wrong += [WRONG[base], [SAMPLE[base]]]
        for value in wrong:
            fields = full(msg)[:i] + (value,) + full(msg)[i + 1:]
            expected = f"must be a {field.type}" if base.startswith("list") else f"must be {field.type}"
            with pytest.raises(ProtocolError) as info:
                parse(msg, fields)
            assert f"malformed {msg.name}" in str(info.value)
            assert f"field '{field.name}' {expected}" in str(info.value), (value, str(info.value))


def test_error_messages_read_well():
    with pytest.raises(ProtocolError, match=r"^malformed PUT request: field 'w' must be int or None$"):
        parse(Msg.PUT, (b"k", b"v", None, "2"))
    with pytest.raises(ProtocolError, match=r"^malformed GET_REPLY: field 'values' must be a list of bytes$"):
        parse(Msg.GET_REPLY, ([b"a", 1], b""))
    with pytest.raises(ProtocolError, match=r"^malformed ERROR frame: field 'extra' is missing$"):
        parse(Msg.ERROR, (1, "boom"))
    with pytest.raises(ProtocolError, match=r"^malformed GET request: fields must be a tuple, not ProtocolError$"):
        parse(Msg.GET, ProtocolError("the decoder's verdict on a malformed body"))


def test_named_access_and_defaults():
    put = parse(Msg.PUT, (b"k", b"v", None, 2))
    assert (put.key, put.value, put.context, put.w, put.dw, put.timeout_ms) == (b"k", b"v", None, 2, None, None)
    assert parse(Msg.PUT, [b"k", b"v"]) == messages.Put(b"k", b"v")  # a list is taken too
    assert parse(Msg.LEAVE, ()) == messages.Leave(None)
    gossip = parse(Msg.GOSSIP, full(Msg.GOSSIP))
    assert gossip.state() == messages.State(*full(Msg.GOSSIP)[5:])
    assert parse(Msg.MERKLE_GET, (1, 0, (1, 2))).indices == (1, 2)  # local callers may pass tuples as lists


def test_unknown_message_types():
    for msg_type in (0, 200, 255, "GET", None):
        with pytest.raises(UnknownMessage):
            parse(msg_type, ())


def test_parse_reply_checks_the_reply_type():
    reply = parse_reply(Msg.GET, (Msg.GET_REPLY, ([b"v"], b"ctx", 3)))
    assert (reply.values, reply.context, reply.ring_version) == ([b"v"], b"ctx", 3)
    assert parse_reply(Msg.PING, (Msg.PONG, ("anything",))) == ()
    with pytest.raises(ProtocolError, match="a PUT request was answered with message type 11"):
        parse_reply(Msg.PUT, (Msg.GET_REPLY, ([], b"", 1)))


def test_error_frames():
    assert messages.error_fields(QuorumNotMet("1 of 2", replied=1, required=2)) == messages.Error(5, "1 of 2", [1, 2])
    error = messages.error_from_fields((5, "short extra", [1]))
    assert isinstance(error, QuorumNotMet) and (error.replied, error.required) == (1, 0)
    too_many = messages.error_from_fields(messages.error_fields(TooManySiblings("51 > 50", siblings=51, limit=50)))
    assert isinstance(too_many, TooManySiblings) and (too_many.siblings, too_many.limit) == (51, 50)
    assert str(too_many) == "51 > 50"
    malformed = messages.error_from_fields((2, "bad extra", ["x"]))
    assert isinstance(malformed, ProtocolError) and "field 'extra'" in str(malformed)
