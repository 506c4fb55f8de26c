"""Fresh actors for writes without a local copy: never handed out twice, across restarts and crashes."""
import random

from dynafast.cluster.actors import Actors
from dynafast.cluster.ports import DirectoryFiles


def test_fresh_actors_are_unique_and_carry_the_base(tmp_path):
    actors = Actors(b"n1.abcd", DirectoryFiles(tmp_path), random.Random(1), block=4)
    made = [actors.fresh() for _ in range(10)]
    assert len(set(made)) == 10
    assert all(a.startswith(b"n1.abcd.") for a in made)
    assert actors.leases == 3  # blocks of 4: leased before use, not per actor


def test_no_epoch_is_reused_after_a_restart_or_a_crash(tmp_path):
    files = DirectoryFiles(tmp_path)
    first = Actors(b"n1.abcd", files, random.Random(1), block=4)
    seen = {first.fresh() for _ in range(3)}
    # A crash: the process is gone without any goodbye; the lease on disk covers what it handed out.
    second = Actors(b"n1.abcd", files, random.Random(1), block=4)
    later = {second.fresh() for _ in range(6)}
    assert not seen & later
    third = Actors(b"n1.abcd", files, random.Random(1), block=4)
    assert not (seen | later) & {third.fresh() for _ in range(5)}


def test_a_lost_lease_gives_actors_a_prefix_of_their_own(tmp_path):
    files = DirectoryFiles(tmp_path)
    before = Actors(b"n1.x", files, random.Random(1))
    handed_out = {before.fresh() for _ in range(3)}
    (tmp_path / "actor_epochs.json").write_text("not json")  # damaged: the epochs handed out are unknown
    after = Actors(b"n1.x", files, random.Random(2))
    again = {after.fresh() for _ in range(3)}
    assert not handed_out & again
    assert all(a.startswith(b"n1.x.") for a in again)


def test_it_knows_the_actors_it_issued_and_no_others(tmp_path):
    actors = Actors(b"n1.7", DirectoryFiles(tmp_path), random.Random(1))
    fresh = [actors.fresh() for _ in range(3)]
    assert all(actors.issued(actor) for actor in fresh)
    # The node's usual actor, the conditional writes' actor and other nodes' actors are not fresh ones.
    for actor in (b"n1.7", b"n1.7.cas", b"n1.70.1", b"n1.7.", b"n1.7.1x", b"n2.7.0"):
        assert not actors.issued(actor), actor
