"""Invoices: PDF renders/s (ledgerx.domain.invoicing.pdf) against fpdf2's own floor, and (to come)
invoices issued/s with gap-free numbering under concurrent issuers.

One process, no database for the PDF sections. Each figure is taken after a warm-up render (the
first render of a process cuts the embedded font faces once; see pdf.py) over --seconds of
back-to-back renders on this thread:

0. baseline: fpdf2 alone drawing one A4 page of plain text (60 lines) in the core Helvetica font,
   nothing embedded: what any fpdf2 document costs here, to read ours against;
1. a 5-line invoice (DejaVu Sans regular and bold embedded, Latin-script text: the cut faces);
2. a 60-line invoice (3 pages, header repeated);
3. the 5-line invoice for a Cyrillic buyer (outside the cut faces: the full faces embedded);
4. issuing: invoices issued/s under 16 concurrent issuers (stub, see `bench_issuing`).

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


# -- issuing (the coordinator's section) ------------------------------------------------------------


async def bench_issuing(issuers: int = 16, seconds: float = 10.0) -> None:
    """TODO(coordinator): invoices issued/s with gap-free numbering under `issuers` concurrent
    issuers (a fresh database; check the numbers are 1..N without gaps or duplicates)."""
    print("issuing: not measured yet")


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
        await bench_issuing()


if __name__ == "__main__":
    asyncio.run(main())
