"""KEYS / SCAN MATCH patterns read as Redis reads them: checked against a port of Redis's stringmatchlen."""
import random

import pytest

from dynafast.resp.keyspace import glob_matcher, glob_prefix


def stringmatch(pattern: bytes, string: bytes) -> bool:
    """Redis 7.0's stringmatchlen (util.c), case-sensitive, ported line by line as the reference."""
    p, s = 0, 0
    while p < len(pattern) and s < len(string):
        c = pattern[p]
        if c == ord("*"):
            while p + 1 < len(pattern) and pattern[p + 1] == ord("*"):
                p += 1
            if p + 1 == len(pattern):
                return True
            return any(stringmatch(pattern[p + 1:], string[k:]) for k in range(s, len(string))) or False
        if c == ord("?"):
            s += 1
        elif c == ord("["):
            p += 1
            negate = p < len(pattern) and pattern[p] == ord("^")
            if negate:
                p += 1
            match = False
            while True:
                if p < len(pattern) and pattern[p] == ord("\\") and len(pattern) - p >= 2:
                    p += 1
                    match |= pattern[p] == string[s]
                elif p < len(pattern) and pattern[p] == ord("]"):
                    break
                elif p >= len(pattern):
                    p -= 1
                    break
                elif len(pattern) - p >= 3 and pattern[p + 1] == ord("-"):
                    low, high = sorted((pattern[p], pattern[p + 2]))
                    p += 2
                    match |= low <= string[s] <= high
                else:
                    match |= pattern[p] == string[s]
                p += 1
            if match == negate:
                return False
            s += 1
        else:
            if c == ord("\\") and len(pattern) - p >= 2:
                p += 1
            if pattern[p] != string[s]:
                return False
            s += 1
        p += 1
        if s == len(string):
            while p < len(pattern) and pattern[p] == ord("*"):
                p += 1
            break
    return p >= len(pattern) and s == len(string)


def matches(pattern: bytes, key: bytes) -> bool:
    match = glob_matcher(pattern)
    return key.startswith(glob_prefix(pattern)) and (match is None or match(key))


@pytest.mark.parametrize("pattern, key, expected", [
    (b"pre[c-a]", b"preb", True),   # a range's ends in either order (it was an internal error)
    (b"", b"k", False),             # an empty pattern matches no key (it matched every key)
    (b"zza[c", b"zzac", True),      # a class without its ] runs to the end of the pattern
    (b"zza[c", b"zza[c", False),
    (b"[^]", b"x", True),
    (b"[]", b"x", False),
    (b"a\\*b", b"a*b", True),
    (b"h?llo", b"hello", True),
    (b"h[^e]llo", b"hello", False),
])
def test_patterns_that_redis_reads_its_own_way(pattern, key, expected):
    assert stringmatch(pattern, key) is expected
    assert matches(pattern, key) is expected


def test_random_patterns_match_as_in_redis():
    rng = random.Random(7)
    alphabet = b"ab-^]\\[*?c"
    for _ in range(20000):
        pattern = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        key = bytes(rng.choice(b"abc-]^[\\") for _ in range(rng.randint(1, 5)))  # keys are never empty here
        assert matches(pattern, key) == stringmatch(pattern, key), (pattern, key)
