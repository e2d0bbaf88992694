"""Invoices: PDF renders/s (ledgerx.domain.invoicing.pdf) against fpdf2's own floor, and invoices
issued/s with gap-free numbering under concurrent issuers against the same transaction without it.

One process, no database for the PDF sections. Each figure is taken after a warm-up render (the
first render of a process cuts the embedded font faces once; see pdf.py) over --seconds of
back-to-back renders on this thread:

0. baseline: fpdf2 alone drawing one A4 page of plain text (60 lines) in the core Helvetica font,
   nothing embedded: what any fpdf2 document costs here, to read ours against;
1. a 5-line invoice whose text Windows-1252 covers (core fonts, nothing embedded);
2. a 60-line invoice (3 pages, header repeated);
3. the 5-line invoice for a Cyrillic buyer (DejaVu Sans embedded: the Latin+Greek+Cyrillic cut);
4. issuing: invoices issued/s under 16 concurrent issuers, and the same transactions without a
   number (DATABASE_URL; see `bench_issuing`).

    .venv/bin/python bench/invoices.py [--seconds 3] [--only baseline,pdf,issuing]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL_RENDERS = 50.0  # 5-line invoices/s on one core
CYRILLIC_NAME = "\u041e\u041e\u041e \u00ab\u0420\u043e\u043c\u0430\u0448\u043a\u0430\u00bb"  # a Russian company name


def rate(render: Callable[[], bytes], seconds: float) -> tuple[float, int]:
    """Renders/s over `seconds` after one warm-up render, and the size of one output."""
    size = len(render())
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        render()
        n += 1
    return n / (time.perf_counter() - t0), size


def baseline_page() -> bytes:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.add_page()
    pdf.set_font("helvetica", size=9)
    for i in range(60):
        pdf.cell(0, 4.5, f"Line {i:03d}: Pro plan seats, billed monthly   3   USD 411.52   USD 1,234.56")
        pdf.ln(4.5)
    return bytes(pdf.output())


def sample_invoice(lines: int, buyer_name: str = "Müller GmbH") -> Any:
    from ledgerx.domain.invoicing.documents import DocLine, DocTaxLine, InvoiceDocument, Party

    start = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    end = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    doc_lines = tuple(
        DocLine(
            f"Pro plan seats, line {i}: billed monthly in advance for the whole team", 3, 41_152, 123_456, start, end
        )
        for i in range(lines)
    )
    subtotal = 123_456 * lines
    tax = subtotal // 5
    return InvoiceDocument(
        title="Invoice",
        number="LX-2026-000042",
        issued_at=end,
        seller=Party(
            "LedgerX Ltd", ("1 Long Lane", "London EC1A 9HF"), ("gb_vat GB123456789",), "billing@ledgerx.example"
        ),
        buyer=Party(buyer_name, ("Hauptstraße 5", "10115 Berlin"), ("eu_vat DE811907980",), "ap@example.com"),
        currency="USD",
        lines=doc_lines,
        subtotal=subtotal,
        discount=0,
        tax=tax,
        total=subtotal + tax,
        tax_lines=(DocTaxLine("VAT", Decimal("20"), False, tax),),
        amount_paid=subtotal + tax,
        amount_due=0,
        status="PAID",
        notes=("Thank you for your business.",),
        period_start=start,
        period_end=end,
    )


def bench_baseline(seconds: float) -> float:
    rps, size = rate(baseline_page, seconds)
    print(f"baseline  fpdf2, 1 page of 60 text lines, core Helvetica: {rps:8.1f} renders/s  ({size:,} bytes)")
    return rps


def bench_pdf(seconds: float, baseline: float | None) -> None:
    from ledgerx.domain.invoicing.pdf import render_invoice

    for label, doc in (
        ("invoice, 5 lines", sample_invoice(5)),
        ("invoice, 60 lines", sample_invoice(60)),
        ("invoice, 5 lines, Cyrillic buyer", sample_invoice(5, CYRILLIC_NAME)),
    ):
        rps, size = rate(lambda doc=doc: render_invoice(doc), seconds)
        ratio = f", {baseline / rps:5.1f}x the baseline's time" if baseline else ""
        goal = f"  (goal >= {GOAL_RENDERS:.0f}/s)" if label == "invoice, 5 lines" else ""
        print(f"{label:<34} {rps:8.1f} renders/s  ({size:,} bytes{ratio}){goal}")


# -- issuing ----------------------------------------------------------------------------------------
#
# A fresh database on the DATABASE_URL server (the embedded one when unset), dropped afterwards; one
# project per issuer, each with a billing email (so issuing snapshots details and queues a mail, as
# in production). Each issuer loops one transaction: INSERT an invoice and its line, then issue it
# (billing-details snapshot, number, mail row) and COMMIT. The baseline is the same transaction
# with everything `issuing.issue` does except taking the number: what the gapless sequence costs
# is the difference (issuers of one kind serialize on its row from the take to their commit).


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p / 100))] if s else float("nan")


async def _issuing_database() -> tuple[str, str, str]:
    """(admin url, fresh database url, redis url): a new database created on the DATABASE_URL server."""
    import secrets
    import tempfile

    import asyncpg

    from ledgerx.db.engine import asyncpg_dsn
    from ledgerx.db.migrate import upgrade
    from ledgerx.services import resolve_urls
    from ledgerx.settings import Settings

    os.environ.setdefault("LEDGERX_DATA_DIR", tempfile.mkdtemp(prefix="lxbench-"))
    s = resolve_urls(Settings.from_env())
    assert s.database_url and s.redis_url
    name = f"lxbench_inv_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(asyncpg_dsn(s.database_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, query = s.database_url.partition("?")
    url = base[: base.rfind("/") + 1] + name + ("?" + query if query else "")
    await asyncio.to_thread(upgrade, url)
    return s.database_url, url, s.redis_url


async def _drop_database(admin_url: str, url: str) -> None:
    import asyncpg

    from ledgerx.db.engine import asyncpg_dsn

    name = url.partition("?")[0].rsplit("/", 1)[1]
    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _issue_one(svc: Any, project_id: Any, *, numbered: bool) -> None:
    """One issuing transaction: a PAID invoice with one line, issued (numbered) or, for the
    baseline, given everything issuing gives it but the number."""
    from ledgerx.db.models import Invoice, InvoiceLine
    from ledgerx.domain.invoicing import issuing
    from ledgerx.domain.notifications.kinds import Kind
    from ledgerx.domain.notifications.notify import notify
    from ledgerx.ids import uuid7

    async with svc.db.transaction(project_id=project_id) as s:
        invoice = Invoice(
            id=uuid7(),
            project_id=project_id,
            kind="OTHER",
            status="PAID",
            currency="USD",
            total=1200,
            subtotal=1200,
            amount_due=1200,
            amount_paid=1200,
            paid_at=svc.payments.now(),
        )
        s.add(invoice)
        s.add(
            InvoiceLine(
                id=uuid7(),
                invoice_id=invoice.id,
                project_id=project_id,
                position=0,
                description="Pro plan, 1 month",
                amount=1200,
                unit_amount=1200,
                currency="USD",
                quantity=1,
            )
        )
        await s.flush()
        if numbered:
            assert await issuing.issue(svc.payments, s, invoice)
            return
        invoice.billing_details = await issuing.details_snapshot(s, project_id)
        await s.flush()
        facts = {"invoice_number": "(none)", "amount": "$12.00", "issued_on": "today", "pdf_url": "-"}
        await notify(s, project_id, Kind.INVOICE_ISSUED, f"invoice:{invoice.id}", facts)


async def _issuing_rate(
    svc: Any, projects: list[Any], seconds: float, *, numbered: bool
) -> tuple[int, float, list[float]]:
    """`len(projects)` concurrent issuers for `seconds`: (transactions, elapsed, latencies)."""
    lat: list[float] = []
    deadline = time.perf_counter() + seconds

    async def issuer(pid: Any) -> int:
        n = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await _issue_one(svc, pid, numbered=numbered)
            lat.append(time.perf_counter() - t0)
            n += 1
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(issuer(p) for p in projects))
    return sum(counts), time.perf_counter() - t0, lat


async def bench_issuing(issuers: int = 16, seconds: float = 10.0) -> None:
    """Invoices issued/s with gapless numbering under `issuers` concurrent issuers, against the
    same transaction without a number, on a fresh database; then the numbers are checked: per year
    exactly 1..N, N = the invoices issued, and the sequence's counter says N."""
    import asyncpg

    from ledgerx import logs
    from ledgerx.db.engine import asyncpg_dsn
    from ledgerx.ids import uuid7
    from ledgerx.services import Services
    from ledgerx.settings import Settings

    logs.configure("WARNING")
    admin_url, url, redis_url = await _issuing_database()
    svc = Services.build(
        Settings(
            database_url=url,
            redis_url=redis_url,
            redis_prefix=f"lxbench:{uuid7().hex[:6]}:",
            db_pool_size=issuers,  # one connection per issuer: they wait for the row, not the pool
            scheduler_enabled=False,
            worker_enabled=False,
        )
    )
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        projects = [uuid7() for _ in range(issuers)]
        for i, pid in enumerate(projects):
            await conn.execute("INSERT INTO projects (id, name) VALUES ($1, $2)", pid, f"bench {i}")
            await conn.execute(
                "INSERT INTO billing_details (project_id, email, legal_name, address_country, tax_ids)"
                " VALUES ($1, $2, 'Bench GmbH', 'DE', '[]')",
                pid,
                f"ap{i}@bench.example",
            )
        warm = {}  # warm-up: connections, prepared statements (its invoices are counted below)
        for numbered in (False, True):
            warm[numbered] = (await _issuing_rate(svc, projects, 0.5, numbered=numbered))[0]
        await conn.execute("ANALYZE")
        base_n, base_t, base_lat = await _issuing_rate(svc, projects, seconds, numbered=False)
        n, t, lat = await _issuing_rate(svc, projects, seconds, numbered=True)
        base_rate, rate_ = base_n / base_t, n / t
        print(
            f"issuing   {issuers} concurrent issuers, {seconds:.0f} s each; transaction = INSERT invoice + line,"
            " billing-details snapshot, mail row, COMMIT"
        )
        print(
            f"baseline  same transaction, no number:       {base_rate:8.1f} invoices/s"
            f"  p50 {_pct(base_lat, 50) * 1000:6.2f} ms  p99 {_pct(base_lat, 99) * 1000:6.2f} ms"
        )
        print(
            f"issuing   with the gapless number:           {rate_:8.1f} invoices/s"
            f"  p50 {_pct(lat, 50) * 1000:6.2f} ms  p99 {_pct(lat, 99) * 1000:6.2f} ms"
            f"  ({rate_ / base_rate:.2f}x the baseline's rate)"
        )
        rows = await conn.fetch(
            "SELECT split_part(number, '-', 2)::int AS year, count(*) AS n, count(DISTINCT number) AS distinct_n,"
            " min(split_part(number, '-', 3)::bigint) AS lo, max(split_part(number, '-', 3)::bigint) AS hi"
            " FROM invoices WHERE number IS NOT NULL GROUP BY 1 ORDER BY 1"
        )
        counters = {
            r["year"]: r["last_value"]
            for r in await conn.fetch("SELECT year, last_value FROM document_sequences WHERE kind = 'INVOICE'")
        }
        unnumbered = await conn.fetchval("SELECT count(*) FROM invoices WHERE number IS NULL")
        issued = sum(r["n"] for r in rows)
        gapless = all(
            r["n"] == r["distinct_n"] == r["hi"] and r["lo"] == 1 and counters.get(r["year"]) == r["n"] for r in rows
        )
        print(
            f"check     numbered invoices {issued} = issued {warm[True] + n} (warm-up included):"
            f" {issued == warm[True] + n}; per year exactly 1..N, no repeat, counter = N: {gapless};"
            f" baseline invoices unnumbered {unnumbered} = {warm[False] + base_n}: {unnumbered == warm[False] + base_n}"
        )
    finally:
        await conn.close()
        await svc.close()
        await _drop_database(admin_url, url)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--only", default="baseline,pdf,issuing")
    args = ap.parse_args()
    sections = set(args.only.split(","))
    print(f"{os.cpu_count()} cores; {args.seconds:.0f} s per figure, one thread, after a warm-up render")
    baseline = bench_baseline(args.seconds) if "baseline" in sections else None
    if "pdf" in sections:
        bench_pdf(args.seconds, baseline)
    if "issuing" in sections:
        await bench_issuing(seconds=args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
