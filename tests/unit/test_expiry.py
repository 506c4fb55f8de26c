"""The cluster's value envelope for TTLs: every byte string survives it, and expired values read as deleted."""
import os
import random

from dynafast._impl import vclock
from dynafast.cluster import expiry

SAMPLES = [b"", b"x", expiry.MARK, expiry.MARK + b"\x00", expiry.MARK + b"\x01", expiry.MARK + b"\x01" + b"\0" * 8,
           expiry.MARK + b"\x02abc", b"\x00" + expiry.MARK] + [os.urandom(random.randrange(0, 40)) for _ in range(500)]


def test_every_byte_string_comes_back_unchanged():
    for value in SAMPLES:
        assert expiry.unwrap(expiry.wrap(value)) == (value, None)
        assert expiry.unwrap(expiry.wrap(value, 1234)) == (value, 1234)
        assert expiry.expires_at(expiry.wrap(value)) is None


def test_plain_values_not_starting_with_the_mark_are_stored_as_they_are():
    value = b"hello"
    assert expiry.wrap(value) is value


def test_visible_hides_expired_values_and_says_what_is_left():
    now = 10_000
    live = [expiry.wrap(b"a", now + 500), expiry.wrap(b"b", now), expiry.wrap(b"c")]
    assert expiry.visible(live, now) == ([b"a", b"c"], [500, expiry.NO_EXPIRY])
    assert expiry.visible([expiry.wrap(b"a", now)], now) == ([], None)
    assert expiry.visible([expiry.wrap(b"a", now + 1)], now) == ([b"a"], [1])
    # equal values are one, living as long as the longest-lived copy
    assert expiry.visible([expiry.wrap(b"a", now + 5), expiry.wrap(b"a", now + 9)], now) == ([b"a"], [9])
    assert expiry.visible([expiry.wrap(b"a", now + 5), b"a"], now) == ([b"a"], None)
    assert expiry.visible([b"p", b"p", b"q"], now) == ([b"p", b"q"], None)


def test_an_object_is_gone_once_every_live_value_expired():
    s = vclock.Siblings.new(expiry.wrap(b"v", 1000)).update(None, b"actor", 1)
    assert expiry.gone_at(s) == 1000
    assert not expiry.gone(s, 999) and expiry.gone(s, 1000)
    both = s.sync(vclock.Siblings.new(expiry.wrap(b"w")).update(None, b"other", 1))
    assert expiry.gone_at(both) is None and not expiry.gone(both, 10**12)
    tomb = vclock.Siblings.new(None, s.context()).update(s, b"actor", 2)
    assert tomb.is_deleted() and expiry.gone(tomb, 0) and expiry.gone_at(tomb) is None
