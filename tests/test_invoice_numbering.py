"""Gapless document numbers (domain/invoicing/numbering.py) against a real PostgreSQL: 200 concurrent
issuers on a fresh sequence get exactly 1..200; two app instances (two engines) issuing at once stay
gapless and unique; a rolled-back take gives its number back, also to an issuer already waiting
for it; credit notes count on their own; numbers keep growing past six digits; random mixes of
commits and rollbacks leave exactly 1..k (hypothesis); an invoice is issued once however often
`issuing.issue` runs, and a credit-pack purchase whose Stripe event arrives twice (and is then
handled again 10 times at once) has one invoice, one number and one "invoice issued" mail.

The concurrency tests each run on a database of their own, so their sequences start empty and no
other test's numbers can interleave with theirs."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import re
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import select

from ledgerx import ids
from ledgerx.db.engine import Database, asyncpg_dsn
from ledgerx.db.migrate import upgrade
from ledgerx.db.models import Invoice
from ledgerx.domain.invoicing import issuing, numbering
from ledgerx.domain.invoicing.numbering import DocumentKind
from ledgerx.domain.notifications.kinds import Kind as Mail
from ledgerx.domain.payments.handlers import dispatch
from ledgerx.ids import uuid7
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, database_of_its_own, sign_up
from tests.fake_stripe import FakeStripe, checkout, create_pack, deliver, deliver_and_process, stripe_settings
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

T = TypeVar("T")
PREFIX = "LX-"
NUMBER = re.compile(r"^LX-(CN-)?(\d{4})-(\d{6,})$")


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    # The end-to-end test buys a credit pack through the fake Stripe; the others ignore Stripe.
    return stripe_settings(settings, fake)


@dataclasses.dataclass
class Own:
    """A freshly migrated database of the test's own and a way to build app instances on it."""

    url: str
    settings: Settings
    built: list[Services]

    def instance(self, pool_size: int = 10) -> Services:
        # pool_size + overflow: 2 * pool_size connections; 200 issuers queue for them and the row.
        svc = Services.build(dataclasses.replace(self.settings, database_url=self.url, db_pool_size=pool_size))
        self.built.append(svc)
        return svc

    async def sql(self, query: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(asyncpg_dsn(self.url))
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def counters(self, kind: DocumentKind) -> dict[int, int]:
        rows = await self.sql("SELECT year, last_value FROM document_sequences WHERE kind = $1", kind.value)
        return {int(r["year"]): int(r["last_value"]) for r in rows}


@pytest.fixture
async def own(admin_database_url: str, settings: Settings) -> AsyncIterator[Own]:
    async with database_of_its_own(admin_database_url, "lxnum") as url:
        await asyncio.to_thread(upgrade, url)
        o = Own(url, settings, [])
        try:
            yield o
        finally:
            for svc in o.built:
                await svc.close()


# -- helpers ------------------------------------------------------------------------------------------------


class GiveBack(Exception):
    """Raised inside an issuing transaction to roll it back."""


def parse(number: str, kind: DocumentKind = DocumentKind.INVOICE) -> tuple[int, int]:
    """(year, value) of a formatted number (asserts its format and kind)."""
    m = NUMBER.match(number)
    assert m, number
    assert bool(m.group(1)) is (kind is DocumentKind.CREDIT_NOTE), number
    return int(m.group(2)), int(m.group(3))


def assert_gapless(numbers: Iterable[str], before: dict[int, int], kind: DocumentKind = DocumentKind.INVOICE) -> None:
    """Per year, the numbers are exactly before+1 .. before+n: no gap, no repeat. (Per year, so a
    run that crosses midnight of New Year's Eve UTC still checks what it should.)"""
    by_year: dict[int, list[int]] = collections.defaultdict(list)
    for n in numbers:
        year, value = parse(n, kind)
        by_year[year].append(value)
    for year, values in by_year.items():
        start = before.get(year, 0)
        assert sorted(values) == list(range(start + 1, start + len(values) + 1)), (year, start, sorted(values))


async def take(
    db: Database,
    kind: DocumentKind = DocumentKind.INVOICE,
    *,
    delay: float = 0.0,
    hold: float = 0.0,
    give_back: bool = False,
    taken: list[str] | None = None,
) -> str:
    """One issuing transaction: wait `delay`, take a number, hold the sequence row `hold` seconds,
    then commit (or roll back with GiveBack). `taken` gets the number even when it is given back."""
    await asyncio.sleep(delay)
    async with db.transaction() as s:
        number, _ = await numbering.take(s, kind, PREFIX)
        if taken is not None:
            taken.append(number)
        await asyncio.sleep(hold)
        if give_back:
            raise GiveBack(number)
    return number


async def waiting_on_a_lock(own: Own, n: int) -> None:
    """Until `n` backends of the database wait for a lock (an issuer blocked on the sequence row)."""
    for _ in range(500):
        rows = await own.sql(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if rows[0]["n"] >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw {n} issuer(s) waiting for the sequence row")


# -- concurrency --------------------------------------------------------------------------------------------


async def test_200_concurrent_issuers_get_exactly_1_to_200(own: Own) -> None:
    svc = own.instance(pool_size=10)
    rng = random.Random(200)
    stamped: list[tuple[str, Any]] = []

    async def issuer() -> str:
        await asyncio.sleep(rng.random() * 0.005)
        async with svc.db.transaction() as s:
            number, at = await numbering.take(s, DocumentKind.INVOICE, PREFIX)
        stamped.append((number, at))
        return number

    numbers = await asyncio.gather(*(issuer() for _ in range(200)))
    assert_gapless(numbers, {})  # a fresh sequence: 1..200
    assert len(set(numbers)) == 200
    after = await own.counters(DocumentKind.INVOICE)
    assert sum(after.values()) == 200
    # The issue instants ascend with the numbers (each is read once the previous issuer committed).
    ordered = sorted(stamped, key=lambda p: parse(p[0]))
    instants = [at for _, at in ordered]
    assert instants == sorted(instants)


async def test_two_instances_issuing_at_once_stay_gapless_and_unique(own: Own) -> None:
    a, b = own.instance(pool_size=5), own.instance(pool_size=5)
    assert a.db.engine is not b.db.engine
    rng = random.Random(2)
    jobs = [take(db, delay=rng.random() * 0.01, hold=rng.random() * 0.002) for db in [a.db, b.db] * 60]
    numbers = await asyncio.gather(*jobs)
    assert len(set(numbers)) == 120
    assert_gapless(numbers, {})
    # The server saw two pools, each with several connections, taking turns on one row.
    assert sum((await own.counters(DocumentKind.INVOICE)).values()) == 120


async def test_a_rolled_back_issue_gives_its_number_back(own: Own) -> None:
    svc = own.instance(pool_size=3)
    first = await take(svc.db)
    assert parse(first)[1] == 1
    with pytest.raises(GiveBack) as given_back:
        await take(svc.db, give_back=True)
    assert parse(str(given_back.value))[1] == 2
    assert sum((await own.counters(DocumentKind.INVOICE)).values()) == 1
    assert await take(svc.db) == str(given_back.value)  # the next issue gets it: no gap

    # The same with an issuer already waiting for the row: it gets the number given back.
    holder_has_it, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with svc.db.transaction() as s:
            number, _ = await numbering.take(s, DocumentKind.INVOICE, PREFIX)
            assert parse(number)[1] == 3
            holder_has_it.set()
            await release.wait()
            raise GiveBack(number)

    held = asyncio.create_task(holder())
    await holder_has_it.wait()
    waiter = asyncio.create_task(take(svc.db))
    await waiting_on_a_lock(own, 1)
    release.set()
    with pytest.raises(GiveBack):
        await held
    assert parse(await waiter)[1] == 3
    assert sum((await own.counters(DocumentKind.INVOICE)).values()) == 3


async def test_credit_notes_have_their_own_sequence_and_format(own: Own) -> None:
    svc = own.instance(pool_size=5)
    invoices = await asyncio.gather(*(take(svc.db) for _ in range(5)))
    notes = await asyncio.gather(*(take(svc.db, DocumentKind.CREDIT_NOTE) for _ in range(3)))
    assert_gapless(invoices, {})
    assert_gapless(notes, {}, DocumentKind.CREDIT_NOTE)
    assert all(re.fullmatch(r"LX-CN-\d{4}-00000[123]", n) for n in notes), notes
    assert all(re.fullmatch(r"LX-\d{4}-00000[1-5]", n) for n in invoices), invoices
    assert sum((await own.counters(DocumentKind.INVOICE)).values()) == 5
    assert sum((await own.counters(DocumentKind.CREDIT_NOTE)).values()) == 3


async def test_numbers_grow_past_six_digits_instead_of_wrapping(own: Own) -> None:
    svc = own.instance(pool_size=2)
    first = await take(svc.db)
    year = parse(first)[0]
    await own.sql(
        "UPDATE document_sequences SET last_value = 999998 WHERE kind = 'INVOICE' AND year = $1",
        year,
    )
    assert [await take(svc.db) for _ in range(3)] == [f"LX-{year}-999999", f"LX-{year}-1000000", f"LX-{year}-1000001"]


def test_format_number() -> None:
    inv, cn = DocumentKind.INVOICE, DocumentKind.CREDIT_NOTE
    assert numbering.format_number("LX-", inv, 2026, 42) == "LX-2026-000042"
    assert numbering.format_number("LX-", cn, 2026, 7) == "LX-CN-2026-000007"
    assert numbering.format_number("ACME-", inv, 2027, 1) == "ACME-2027-000001"
    assert numbering.format_number("LX-", inv, 2026, 999_999) == "LX-2026-999999"
    # More digits, never a wrap (and never a repeat of 000000 / 000001).
    assert numbering.format_number("LX-", inv, 2026, 1_000_000) == "LX-2026-1000000"
    assert numbering.format_number("LX-", cn, 2026, 12_345_678) == "LX-CN-2026-12345678"
    values = [1, 9, 10, 999_999, 1_000_000, 1_000_001, 10**9]
    formatted = [numbering.format_number("LX-", inv, 2026, v) for v in values]
    assert len(set(formatted)) == len(values)
    assert [parse(f)[1] for f in formatted] == values


# -- random interleavings (hypothesis) ----------------------------------------------------------------------

PLANS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=8),  # ms before the take
        st.integers(min_value=0, max_value=3),  # ms holding the row
        st.booleans(),  # commits (else rolls back)
    ),
    min_size=1,
    max_size=30,
)


async def test_random_commits_and_rollbacks_leave_exactly_1_to_k(own: Own) -> None:
    svc = own.instance(pool_size=5)
    loop = asyncio.get_running_loop()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=120)

    async def round_of(plan: list[tuple[int, int, bool]]) -> None:
        before = await own.counters(DocumentKind.INVOICE)
        taken: list[str] = []
        results = await asyncio.gather(
            *(take(svc.db, delay=d / 1000, hold=h / 1000, give_back=not commit, taken=taken) for d, h, commit in plan),
            return_exceptions=True,
        )
        committed = [r for r in results if isinstance(r, str)]
        given_back = [r for r in results if isinstance(r, GiveBack)]
        assert len(committed) + len(given_back) == len(plan), results
        k = sum(commit for _, _, commit in plan)
        assert len(committed) == k
        assert_gapless(committed, before)
        after = await own.counters(DocumentKind.INVOICE)
        assert sum(after.values()) - sum(before.values()) == k
        # A number given back was handed out again (or is the next one): never beyond k + 1.
        assert set(taken) >= set(committed)
        per_year = collections.Counter(parse(c)[0] for c in committed)
        for g in given_back:
            year, value = parse(str(g))
            assert value <= before.get(year, 0) + per_year[year] + 1, (str(g), before, per_year)

    @hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(PLANS)
    def check(plan: list[tuple[int, int, bool]]) -> None:
        run(round_of(plan))

    await asyncio.to_thread(check)


# -- issuing an invoice: once -------------------------------------------------------------------------------


async def new_project_with_billing_email(own: Own) -> tuple[uuid.UUID, str]:
    pid, email = uuid7(), f"ap-{uuid.uuid4().hex[:8]}@example.com"
    await own.sql("INSERT INTO projects (id, name) VALUES ($1, 'numbering test')", pid)
    await own.sql(
        "INSERT INTO billing_details (project_id, email, legal_name, address_country, address_city, tax_ids)"
        " VALUES ($1, $2, 'Acme GmbH', 'DE', 'Berlin', '[]')",
        pid,
        email,
    )
    return pid, email


async def paid_invoice(svc: Services, pid: uuid.UUID, total: int = 1200) -> uuid.UUID:
    invoice_id = uuid7()
    async with svc.db.transaction(project_id=pid) as s:
        s.add(
            Invoice(
                id=invoice_id,
                project_id=pid,
                kind="OTHER",
                status="PAID",
                currency="USD",
                total=total,
                subtotal=total,
                amount_paid=total,
                paid_at=svc.payments.now(),
            )
        )
    return invoice_id


async def lock_and_issue(svc: Services, pid: uuid.UUID, invoice_id: uuid.UUID) -> bool:
    """What a payment handler does: lock the invoice row, then issue it in the same transaction."""
    async with svc.db.transaction(project_id=pid) as s:
        invoice = (await s.execute(select(Invoice).where(Invoice.id == invoice_id).with_for_update())).scalar_one()
        return await issuing.issue(svc.payments, s, invoice)


async def test_issuing_twice_is_a_no_op(own: Own) -> None:
    svc = own.instance(pool_size=5)
    pid, email = await new_project_with_billing_email(own)
    invoice_id = await paid_invoice(svc, pid)

    assert await lock_and_issue(svc, pid, invoice_id) is True
    (row,) = await own.sql("SELECT number, issued_at, billing_details FROM invoices WHERE id = $1", invoice_id)
    number = row["number"]
    assert parse(number)[1] == 1 and row["issued_at"] is not None
    assert '"legalName": "Acme GmbH"' in row["billing_details"]

    # Again, sequentially and then 10 at once: nothing changes, no number is used up.
    assert await lock_and_issue(svc, pid, invoice_id) is False
    assert await asyncio.gather(*(lock_and_issue(svc, pid, invoice_id) for _ in range(10))) == [False] * 10
    (again,) = await own.sql("SELECT number, issued_at FROM invoices WHERE id = $1", invoice_id)
    assert (again["number"], again["issued_at"]) == (number, row["issued_at"])
    assert sum((await own.counters(DocumentKind.INVOICE)).values()) == 1
    mails = await own.sql("SELECT to_addr, occurrence_key FROM mail_outbox WHERE kind = $1", Mail.INVOICE_ISSUED.slug)
    assert [(m["to_addr"], m["occurrence_key"]) for m in mails] == [
        (email, f"{Mail.INVOICE_ISSUED.slug}:invoice:{invoice_id}")
    ]

    # A fresh invoice issued by 10 handlers at once: one of them numbers it, the next number.
    second = await paid_invoice(svc, pid)
    assert sorted(await asyncio.gather(*(lock_and_issue(svc, pid, second) for _ in range(10)))) == [False] * 9 + [True]
    (row2,) = await own.sql("SELECT number FROM invoices WHERE id = $1", second)
    assert parse(row2["number"])[1] == 2
    assert sum((await own.counters(DocumentKind.INVOICE)).values()) == 2


async def test_an_unpaid_invoice_has_no_number(own: Own) -> None:
    svc = own.instance(pool_size=2)
    pid, _ = await new_project_with_billing_email(own)
    async with svc.db.transaction(project_id=pid) as s:
        s.add(Invoice(id=uuid7(), project_id=pid, kind="OTHER", status="OPEN", currency="USD", total=500))
    assert await own.sql("SELECT number FROM invoices WHERE number IS NOT NULL") == []
    assert await own.counters(DocumentKind.INVOICE) == {}
    # The database refuses a number without its issue instant (and the reverse).
    with pytest.raises(asyncpg.CheckViolationError):
        await own.sql("UPDATE invoices SET number = 'LX-2026-000001' WHERE project_id = $1", pid)
    with pytest.raises(asyncpg.CheckViolationError):
        await own.sql("UPDATE invoices SET issued_at = now() WHERE project_id = $1", pid)


# -- end to end: a credit pack bought once, its event delivered twice ---------------------------------------


async def test_a_pack_purchase_delivered_twice_has_one_invoice_one_number_one_mail(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe
) -> None:
    admin = await make_platform_admin(gql, settings)
    pack = await create_pack(gql, admin, credits=500, amount=900)
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    puuid = ids.decode("project", pid)

    async def counters() -> dict[int, int]:
        rows = await owner_sql(settings, "SELECT year, last_value FROM document_sequences WHERE kind = 'INVOICE'")
        return {int(r["year"]): int(r["last_value"]) for r in rows}

    before = await counters()
    session_id = await checkout(gql, owner, pid, creditPackId=pack)
    (event,) = fake.complete_checkout(session_id)
    await deliver_and_process(client, services, event)
    second = await deliver(client, event)
    assert second.status_code == 200 and second.json()["duplicate"] is True
    # Past the inbox's dedup: the handler itself, run again 10 times at once (replays, reconciliation).
    await asyncio.gather(*(dispatch.handle(services.payments, event) for _ in range(10)))

    invoices = await owner_sql(
        settings, "SELECT id, number, issued_at, kind, status, total FROM invoices WHERE project_id = $1", puuid
    )
    assert len(invoices) == 1
    (inv,) = invoices
    assert (inv["kind"], inv["status"], inv["total"]) == ("CREDIT_PACK", "PAID", 900)
    assert inv["number"] is not None and inv["issued_at"] is not None
    assert_gapless([inv["number"]], before)
    after = await counters()
    assert sum(after.values()) - sum(before.values()) == 1
    payments = await owner_sql(settings, "SELECT invoice_id FROM payments WHERE project_id = $1", puuid)
    assert [p["invoice_id"] for p in payments] == [inv["id"]]
    mails = await owner_sql(
        settings,
        "SELECT to_addr, occurrence_key, body_text FROM mail_outbox WHERE project_id = $1 AND kind = $2",
        puuid,
        Mail.INVOICE_ISSUED.slug,
    )
    assert len(mails) == 1
    assert mails[0]["to_addr"] == owner.email.lower()
    assert mails[0]["occurrence_key"] == f"{Mail.INVOICE_ISSUED.slug}:invoice:{inv['id']}"
    assert inv["number"] in mails[0]["body_text"]
