"""The hash-chain bytes are a stored format: existing chains in existing databases must still
verify after any change to how the ledger computes them.

PINNED holds hashes computed by the hashing code as it was at commit 83d4399 (before the #19
performance work), for a chain that exercises what the canonical content covers: unicode,
quotes, backslashes and control characters in keys and reasons, empty and missing references,
a refund, an overdraft, amounts near 2**62, a timestamp in another time zone and one with
microseconds. `_reference_*` is that code, verbatim, to check rows the current ledger writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerx.domain.ledger import Kind, Leg, Posting, SystemAccount, WalletRef, hashing, posting
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.services import Services
from tests.ledger_helpers import ACTOR, new_project, new_wallet

P = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
W = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8058")
S = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8059")
A = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a805a")
T0 = dt.datetime(2025, 3, 9, 1, 59, 59, 123456, tzinfo=dt.UTC)
CET = dt.timezone(dt.timedelta(hours=2))

# (txn id, type, kind, signed amount on the wallet, key, reference, reason, refund_of, actor id, created_at)
STEPS: list[tuple[str, str, str, int, str, str | None, str | None, uuid.UUID | None, uuid.UUID | None, dt.datetime]] = [
    ("01890a5d-ac96-774b-bcce-b30209000001", "CREDIT", "ADJUSTMENT", 1000, "seed-1", None, None, None, A, T0),
    (
        "01890a5d-ac96-774b-bcce-b30209000002",
        "DEBIT",
        "USAGE",
        -250,
        'k"\\ é ✓ \n\t\x01',
        "ref/ü",
        'reason with "quotes" and 中文',
        None,
        None,
        T0.astimezone(CET),
    ),
    (
        "01890a5d-ac96-774b-bcce-b30209000003",
        "DEBIT",
        "ADJUSTMENT",
        -2000,
        "k3",
        "",
        "overdraft",
        None,
        A,
        dt.datetime(2026, 12, 6, 0, 0, tzinfo=dt.UTC),
    ),
    (
        "01890a5d-ac96-774b-bcce-b30209000004",
        "CREDIT",
        "REFUND",
        2000,
        "k4",
        None,
        None,
        uuid.UUID("01890a5d-ac96-774b-bcce-b30209000003"),
        None,
        dt.datetime(2026, 12, 6, 0, 0, 1, tzinfo=dt.UTC),
    ),
    (
        "01890a5d-ac96-774b-bcce-b30209000005",
        "DEBIT",
        "ADJUSTMENT",
        -(2**62),
        "big",
        None,
        None,
        None,
        A,
        dt.datetime(2026, 12, 6, 0, 0, 2, 5, tzinfo=dt.UTC),
    ),
]

# Per step: request hash, transaction hash, wallet entry hash (chained), system entry hash.
PINNED = [
    (
        "d43f875c592d8ec1dec57bff292b59aefa9326716d0357d3286b1353fce63b84",
        "6be94fd26035d0323147124528473a9efa8fd5f565e739f3bfe8f9ba9d3bb30a",
        "581117308b0588e87fcbc6d8d603e7de607f918c8e9db6502912139c540d4796",
        "a4c115cbfdf5644c5f4270c6febe1e1950c8164f9d1569ef4cb3689bdd85834a",
    ),
    (
        "ee8d3e5f152daf240f0b84bd0d9fe3fa421beb37de3625ca334463c99b01b4db",
        "b9a903f9df5c1cf1bf819160db108f22869cbc2fd94bfe101c4c9d2852bfd7fe",
        "a3680cf2d92d279b8f90fa176e5d2899dc1654af8ca1fbd64ab8b133a25c2595",
        "103989085f2c867f1ee5bd864c174460238b7cd0e925415c995c9940fb404e53",
    ),
    (
        "04174f6bec076a75e15c9fe608cdda94f7bc2f42906c91eaaea46dba539b286b",
        "6e6265044410246c9e8254c70ba51248cbd0dd36c3255e5d61c92e67b133184c",
        "4d6892882a4d523f934d2da324ad0ddf005dfde2688abf709b8b68555351d475",
        "22dcbc4f65b3a4f85a2ec241ec0433b7dc7861d428e1294a8b0338618749f017",
    ),
    (
        "1145193156645420d85b784f9f1b1ff1bac644dc37470704e562a06abbbdd429",
        "9be47a9a1f109d24a610b421e0b90850efed61b205d534516be1ad3dd6f2d23c",
        "fb0157c76a2b7ed22500817f048cc7c2fb4c8a647d13e6ec54d88e5fd0833f48",
        "0bdbcecfda34e31d144602fd9e4e6c7361de43b854ab411e27485cd61e984760",
    ),
    (
        "e36a0a2a5514f16073ddffdc596fa68bd69d29be2b54694b16fa77132a2f5a23",
        "936a77ea2419f6d68f836571aeb0b3a69ca3311477667156500c3688ba5fe872",
        "b83f933399cae932912e6444bb6dd3148c9f45b0972d6aa3fefd32e7d5a51bb5",
        "f23d91e7adcb741d1341ca938622dda01e184fddf7ddd7dbaa0ae07e334c5447",
    ),
]


def _chain() -> list[tuple[str, str, str, str]]:
    """The pinned chain as the current hashing module computes it."""
    out = []
    prev, bal = hashing.GENESIS, 0
    for i, (tid_text, ty, kind, amt, key, ref, reason, refund_of, actor, at) in enumerate(STEPS, 1):
        tid = uuid.UUID(tid_text)
        currency = "EUR" if i == 2 else "CREDITS"
        rh = hashing.request_hash(
            {"kind": kind, "legs": [[str(W), amt]], "metadata": {"b": 1, "a": [1.5, None]}, "i": i}
        )
        th = hashing.txn_hash(
            id=tid,
            project_id=P,
            wallet_id=W,
            type=ty,
            kind=kind,
            currency=currency,
            amount=abs(amt),
            balance_before=bal,
            balance_after=bal + amt,
            idempotency_key=key,
            request_hash=rh,
            reference=ref,
            reason=reason,
            refund_of=refund_of,
            actor_type="user" if actor else "system",
            actor_id=actor,
            created_at=at,
        )
        eh = hashing.entry_hash(
            prev,
            id=uuid.UUID(int=tid.int + 0x100),
            transaction_id=tid,
            transaction_hash=th,
            wallet_id=W,
            system_account_id=None,
            currency=currency,
            amount=amt,
            balance_before=bal,
            balance_after=bal + amt,
            seq=i,
            created_at=at,
        )
        sh = hashing.entry_hash(
            hashing.GENESIS,
            id=uuid.UUID(int=tid.int + 0x200),
            transaction_id=tid,
            transaction_hash=th,
            wallet_id=None,
            system_account_id=S,
            currency=currency,
            amount=-amt,
            balance_before=None,
            balance_after=None,
            seq=None,
            created_at=at,
        )
        out.append((rh.hex(), th.hex(), eh.hex(), sh.hex()))
        prev, bal = eh, bal + amt
    return out


def test_a_known_chain_hashes_to_the_bytes_the_old_code_wrote() -> None:
    assert _chain() == PINNED


# -- the hashing code as it was (commit 83d4399), to check what the ledger writes now ---------------


def _reference_canon(items: list[Any]) -> bytes:
    return json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode()


def _reference_ts(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def _u(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None


def _reference_txn_hash(r: Any) -> bytes:
    content = _reference_canon(
        [
            "lxtxn1",
            str(r["id"]),
            str(r["project_id"]),
            str(r["wallet_id"]),
            r["type"],
            r["kind"],
            r["currency"],
            r["amount"],
            r["balance_before"],
            r["balance_after"],
            r["idempotency_key"],
            bytes(r["request_hash"]).hex(),
            r["reference"],
            r["reason"],
            _u(r["refund_of"]),
            r["actor_type"],
            _u(r["actor_id"]),
            _reference_ts(r["created_at"]),
        ]
    )
    return hashlib.sha256(content).digest()


def _reference_entry_hash(prev: bytes, e: Any, txn_hash: bytes) -> bytes:
    content = _reference_canon(
        [
            "lxent1",
            str(e["id"]),
            str(e["transaction_id"]),
            txn_hash.hex(),
            _u(e["wallet_id"]),
            _u(e["system_account_id"]),
            e["currency"],
            e["amount"],
            e["balance_before"],
            e["balance_after"],
            e["seq"],
            _reference_ts(e["created_at"]),
        ]
    )
    return hashlib.sha256(prev + content).digest()


def _debit(w: WalletRef, amount: int, key: str, reason: str | None = None) -> Posting:
    return Posting(
        project_id=w.project_id,
        wallet_id=w.id,
        kind=Kind.USAGE,
        currency=w.currency,
        legs=(Leg(-amount, wallet_id=w.id), Leg(amount, system=SystemAccount.USAGE_REVENUE)),
        idempotency_key=key,
        actor=ACTOR,
        reason=reason,
        reference="réf ✓",
    )


async def test_what_a_batch_writes_hashes_as_the_old_code_did(services: Services) -> None:
    """A batch touching wallets several times (credits, debits, a transfer, a refused posting):
    every stored transaction and entry hash is what the old code computes from the stored row,
    each wallet's chain links entry to entry in seq order up to its head, and verifyLedger is ok."""
    pid = await new_project(services)
    a, b = await new_wallet(services, pid, name="a"), await new_wallet(services, pid, name="b")
    batch = [
        posting.credit_posting(ACTOR, a, 500, "c-a"),
        posting.credit_posting(ACTOR, b, 70, 'c-b "q" \\ é'),
        _debit(a, 120, "d-a-1", reason="line\nbreak"),
        posting.transfer_posting(ACTOR, a, b, 30, "t-ab"),
        _debit(b, 10_000, "refused"),  # insufficient funds: writes nothing
        _debit(b, 99, "d-b-1"),
        _debit(a, 1, "d-a-2"),
    ]
    done = await posting.post_many(services.ledger, batch)
    assert sum(1 for o in done.outcomes if isinstance(o, Exception)) == 1
    async with services.db.raw(project_id=pid) as conn:
        txns = await conn.fetch("SELECT * FROM ledger_transactions WHERE project_id = $1", pid)
        entries = await conn.fetch("SELECT * FROM ledger_entries WHERE project_id = $1 ORDER BY seq NULLS LAST", pid)
        heads = await conn.fetch("SELECT id, entry_seq, head_hash FROM wallets WHERE project_id = $1", pid)
    assert len(txns) == 6
    t_hash = {t["id"]: bytes(t["hash"]) for t in txns}
    for t in txns:
        assert bytes(t["hash"]) == _reference_txn_hash(t)
    prev: dict[uuid.UUID, bytes] = {}
    for e in entries:
        if e["wallet_id"] is None:
            assert bytes(e["hash"]) == _reference_entry_hash(hashing.GENESIS, e, t_hash[e["transaction_id"]])
            continue
        before = prev.get(e["wallet_id"], hashing.GENESIS)
        assert bytes(e["prev_hash"]) == before
        assert bytes(e["hash"]) == _reference_entry_hash(before, e, t_hash[e["transaction_id"]])
        prev[e["wallet_id"]] = bytes(e["hash"])
    assert {h["id"]: bytes(h["head_hash"]) for h in heads} == prev
    assert {h["id"]: h["entry_seq"] for h in heads} == {a.id: 4, b.id: 3}
    report = await verify_ledger(services.ledger, pid)
    assert report.ok, report.mismatches


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_uuid = st.uuids()
_big = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_when = st.datetimes(
    min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2999, 1, 1), timezones=st.sampled_from([dt.UTC, CET])
)


@settings(max_examples=300, deadline=None)
@given(
    ids=st.tuples(_uuid, _uuid, _uuid, st.none() | _uuid, st.none() | _uuid),
    texts=st.tuples(_text, _text, _text, _text, st.none() | _text, st.none() | _text, _text),
    numbers=st.tuples(_big, _big, _big, st.none() | _big),
    rh=st.binary(min_size=32, max_size=32),
    at=_when,
)
def test_the_fast_canonical_content_is_the_generic_json(
    ids: tuple[Any, ...], texts: tuple[Any, ...], numbers: tuple[Any, ...], rh: bytes, at: dt.datetime
) -> None:
    """Any content (escapes, unicode, None, 64-bit extremes, time zones) hashes as the generic
    JSON encoder of the old code would have it."""
    tid, pid, wid, other, actor = ids
    ty, kind, currency, key, ref, reason, actor_type = texts
    amount, before, after, seq = numbers
    row = {
        "id": tid,
        "project_id": pid,
        "wallet_id": wid,
        "type": ty,
        "kind": kind,
        "currency": currency,
        "amount": amount,
        "balance_before": before,
        "balance_after": after,
        "idempotency_key": key,
        "request_hash": rh,
        "reference": ref,
        "reason": reason,
        "refund_of": other,
        "actor_type": actor_type,
        "actor_id": actor,
        "created_at": at,
    }
    th = hashing.txn_hash(**row)
    assert th == _reference_txn_hash(row)
    entry = {
        "id": tid,
        "transaction_id": pid,
        "wallet_id": other,
        "system_account_id": actor,
        "currency": currency,
        "amount": amount,
        "balance_before": None if seq is None else before,
        "balance_after": None if seq is None else after,
        "seq": seq,
        "created_at": at,
    }
    assert hashing.entry_hash(rh, transaction_hash=th, **entry) == _reference_entry_hash(rh, entry, th)
