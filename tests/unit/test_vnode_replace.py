"""``Vnodes.replace_if_covering``, what a replica does with a one-round last-write-wins put: it stores the write
only when the write's clock covers every version it holds of the key, and otherwise writes nothing."""
import pytest

import dynafast
from dynafast.cluster.vnode import Vnodes
from conftest import implementations

impl = implementations("vclock")

PARTITION = 3


@pytest.fixture
def vnodes(tmp_path, impl):
    store = dynafast.open(tmp_path / "store")
    yield Vnodes(store, impl)
    store.close()


def overwrite(impl, held, value, actor=b"n1.1", now=5):
    """What a coordinator whose copy is ``held`` sends: ``value`` with that copy's context."""
    return impl.Siblings.new(value, None if held is None else held.context()).update(held, actor, now)


def test_a_write_that_covers_what_is_held_replaces_it(vnodes, impl):
    first = impl.Siblings.new(b"one").update(None, b"n2.1", 1)
    vnodes.write(PARTITION, b"k", first)
    second = overwrite(impl, first, b"two")
    assert vnodes.replace_if_covering(PARTITION, b"k", second, second.to_bytes())
    assert vnodes.get(PARTITION, b"k").live_values() == [b"two"]
    assert vnodes.replace_if_covering(PARTITION, b"new", second)  # nothing held: nothing left uncovered
    assert vnodes.get(PARTITION, b"new") == second


def test_a_write_that_misses_a_held_version_stores_nothing(vnodes, impl):
    first = impl.Siblings.new(b"one").update(None, b"n2.1", 1)
    vnodes.write(PARTITION, b"k", first)
    # Written where ``first`` had not arrived: its context lacks it.
    blind = overwrite(impl, None, b"two")
    assert not vnodes.replace_if_covering(PARTITION, b"k", blind, blind.to_bytes())
    assert vnodes.get(PARTITION, b"k") == first
    # A sibling the writer's copy lacks counts the same, even with the rest seen.
    other = impl.Siblings.new(b"three").update(first, b"n3.1", 2)  # blind: a sibling of "one"
    both = other.sync(first)
    vnodes.write(PARTITION, b"s", both)
    seen_one = overwrite(impl, first, b"four")
    assert not vnodes.replace_if_covering(PARTITION, b"s", seen_one)
    assert sorted(vnodes.get(PARTITION, b"s").live_values()) == [b"one", b"three"]
    assert vnodes.replace_if_covering(PARTITION, b"s", overwrite(impl, both, b"five"))
    assert vnodes.get(PARTITION, b"s").live_values() == [b"five"]


def test_a_hint_is_checked_against_the_hint_held(vnodes, impl):
    first = impl.Siblings.new(b"one").update(None, b"n2.1", 1)
    vnodes.merge_in(PARTITION, b"k", first, hint_for="n4")
    assert not vnodes.replace_if_covering(PARTITION, b"k", overwrite(impl, None, b"two"), hint_for="n4")
    assert vnodes.replace_if_covering(PARTITION, b"k", overwrite(impl, first, b"two"), hint_for="n4")
    assert vnodes.get(PARTITION, b"k", "n4").live_values() == [b"two"]
    assert vnodes.get(PARTITION, b"k") is None


def test_clock_entries_the_writer_pruned_do_not_count_as_versions(vnodes, impl):
    """The coordinator prunes old clock entries from the version it stamps (they carry no version); the replica
    still holds them. That is no version left uncovered: the write is stored, with those entries merged back."""
    now = 200_000
    held = impl.Siblings.new(b"old").update(None, b"n9.1", 1)
    for i in range(12):  # twelve coordinators' entries, two days old
        held = impl.Siblings.new(b"v%d" % i, held.context()).update(held, b"a%02d" % i, 1)
    held = impl.Siblings.new(b"recent", held.context()).update(held, b"n2.1", now - 5)
    vnodes.write(PARTITION, b"k", held)
    stamped = impl.Siblings.new(b"new", held.context()).update(held, b"n1.1", now).prune(now)
    assert len(stamped.clock()) < len(held.clock())  # the premise: entries were pruned
    assert vnodes.replace_if_covering(PARTITION, b"k", stamped, stamped.to_bytes())
    stored = vnodes.get(PARTITION, b"k")
    assert stored.live_values() == [b"new"] and stored == stamped.sync(held)
