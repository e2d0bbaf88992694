"""ids.py after #19's cheaper generation: uuid7 keeps its guarantees and public ids their text."""

from __future__ import annotations

import itertools
import pickle
import random
import threading
import time
import uuid

import pytest

from ledgerx import ids
from ledgerx.domain.errors import BadInput


def _old_encode(kind: str, value: uuid.UUID) -> str:
    """The encoder as it was before #19 (5 bits a step)."""
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    n, chars = value.int, []
    for _ in range(26):
        chars.append(alphabet[n & 31])
        n >>= 5
    return f"{ids.PREFIXES[kind]}_{''.join(reversed(chars))}"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("00000000-0000-0000-0000-000000000000", "wal_00000000000000000000000000"),
        ("ffffffff-ffff-ffff-ffff-ffffffffffff", "wal_7zzzzzzzzzzzzzzzzzzzzzzzzz"),
        ("01890a5d-ac96-774b-bcce-b302099a8057", "wal_01h455vb4pex5vsknk084sn02q"),
    ],
)
def test_public_ids_read_as_before(value: str, text: str) -> None:
    assert ids.encode("wallet", uuid.UUID(value)) == text
    assert ids.decode("wallet", text) == uuid.UUID(value)


def test_encode_equals_the_old_encoder_and_round_trips() -> None:
    rng = random.Random(19)
    for _ in range(5000):
        u = uuid.UUID(int=rng.getrandbits(128))
        assert ids.encode("transaction", u) == _old_encode("transaction", u)
        assert ids.decode("transaction", ids.encode("transaction", u)) == u
    with pytest.raises(BadInput):
        ids.decode("wallet", ids.encode("transaction", uuid.UUID(int=1)))


def test_uuid7_is_a_strictly_increasing_version_7_uuid_like_any_other() -> None:
    before_ms = time.time_ns() // 1_000_000
    made = [ids.uuid7() for _ in range(20_000)]  # > 4096 per ms: the counter's overflow too
    assert all(a < b for a, b in itertools.pairwise(made))
    assert len(set(made)) == len(made)
    for u in made[:50] + made[-50:]:
        assert u.version == 7 and u.variant == uuid.RFC_4122
        same = uuid.UUID(str(u))
        assert same == u and hash(same) == hash(u) and same.bytes == u.bytes
        assert pickle.loads(pickle.dumps(u)) == u
    assert made[0].int >> 80 >= before_ms  # the timestamp is the clock's milliseconds
    # the 62 random bits differ (a pooled random read must never hand the same bytes twice)
    assert len({u.int & ((1 << 62) - 1) for u in made}) == len(made)


def test_uuid7_from_threads_stays_unique_and_increasing_per_thread() -> None:
    out: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def run(i: int) -> None:
        out[i].extend(ids.uuid7() for _ in range(5000))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [u for chunk in out for u in chunk]
    assert len(set(every)) == len(every)
    for chunk in out:
        assert all(a < b for a, b in itertools.pairwise(chunk))
