"""The invoice, credit note and statement PDFs, read back with pypdf (a third party's parser): what
each document must show, page flow of long invoices, and the core-font fallback. No database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from pypdf import PdfReader

from ledgerx.domain.invoicing import pdf
from ledgerx.domain.invoicing.documents import (
    DocLine,
    DocTaxLine,
    InvoiceDocument,
    Party,
    StatementDocument,
    StatementEntry,
)

UTC = dt.UTC
DEJAVU = (pdf.FONT_DIR / pdf.REGULAR_FILE).is_file() and (pdf.FONT_DIR / pdf.BOLD_FILE).is_file()
SELLER = Party(
    "LedgerX Ltd",
    ("1 Long Lane", "London EC1A 9HF", "United Kingdom"),
    ("gb_vat GB123456789",),
    "billing@ledgerx.example",
)
BUYER = Party("Müller GmbH", ("Hauptstraße 5", "10115 Berlin"), ("eu_vat DE811907980",), "ap@mueller.example")


def at(month: int, day: int = 1) -> dt.datetime:
    return dt.datetime(2026, month, day, 12, 30, tzinfo=UTC)


def invoice(lines: int = 5, **changes: object) -> InvoiceDocument:
    doc_lines = tuple(
        DocLine(
            f"Line {i:03d}: Pro plan seats, billed monthly in advance for the whole team",
            3,
            41_152,
            123_456,
            period_start=at(2),
            period_end=at(3),
        )
        for i in range(lines)
    )
    doc = InvoiceDocument(
        title="Invoice",
        number="LX-2026-000042",
        issued_at=dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),  # 03-02 UTC
        seller=SELLER,
        buyer=BUYER,
        currency="USD",
        lines=doc_lines,
        subtotal=123_456,
        discount=1_000,
        tax=24_491,
        total=146_947,
        tax_lines=(DocTaxLine("VAT", Decimal("20.00"), False, 24_491),),
        amount_paid=46_947,
        amount_due=100_000,
        status="OPEN",
        notes=("Reverse charge: VAT to be accounted for by the recipient.",),
        period_start=at(2),
        period_end=at(3),
    )
    return dataclasses.replace(doc, **changes)  # type: ignore[arg-type]


def statement(entries: int = 3, truncated: int = 0) -> StatementDocument:
    return StatementDocument(
        seller=SELLER,
        buyer=BUYER,
        wallet_name="Main wallet",
        wallet_id="wal_7Hq2",
        period_start=at(2),
        period_end=at(3),
        generated_at=at(3, 2),
        opening_balance=12_345,
        closing_balance=11_845,
        credits=1_000,
        debits=1_500,
        entries=tuple(
            StatementEntry(
                at(2, 3) + dt.timedelta(hours=4 * i), f"Entry {i:03d} API calls", -500 if i % 2 else 1_000, 12_345 + i
            )
            for i in range(entries)
        ),
        truncated=truncated,
    )


def pages(data: bytes) -> list[str]:
    assert data.startswith(b"%PDF-")
    return [page.extract_text() for page in PdfReader(io.BytesIO(data)).pages]


def text(data: bytes) -> str:
    return "\n".join(pages(data))


def test_an_invoice_shows_its_parties_lines_taxes_and_totals() -> None:
    shown = text(pdf.render_invoice(invoice()))
    assert "Invoice" in shown and "LX-2026-000042" in shown and "OPEN" in shown
    assert "2026-03-02" in shown  # issued_at printed in UTC
    assert "2026-02-01 – 2026-03-01" in shown
    for expected in [
        SELLER.name,
        *SELLER.address,
        *SELLER.tax_ids,
        "Müller GmbH",
        "Hauptstraße 5",
        "ap@mueller.example",
    ]:
        assert expected in shown, expected
    for i in range(5):
        assert f"Line {i:03d}: Pro plan seats" in shown
    assert "USD 411.52" in shown and "USD 1,234.56" in shown  # unit amount, line amount
    assert re.search(r"Subtotal\s*USD 1,234\.56", shown)
    assert re.search(r"Discount\s*USD -10\.00", shown)
    assert re.search(r"VAT 20 % \(exclusive\)\s*USD 244\.91", shown)
    assert re.search(r"Tax total\s*USD 244\.91", shown)
    assert re.search(r"Total\s*USD 1,469\.47", shown)
    assert re.search(r"Amount paid\s*USD 469\.47", shown)
    assert re.search(r"Amount due\s*USD 1,000\.00", shown)
    assert "Reverse charge: VAT to be accounted for by the recipient." in shown


def test_inclusive_tax_rates_print_without_exponent_and_no_discount_row_when_zero() -> None:
    doc = invoice(
        discount=0,
        tax_lines=(
            DocTaxLine("Sales tax", Decimal("7.250"), True, 1_234),
            DocTaxLine("VAT", Decimal("2E+1"), True, 20),
        ),
    )
    shown = text(pdf.render_invoice(doc))
    assert re.search(r"Sales tax 7\.25 % \(included\)\s*USD 12\.34", shown)
    assert "VAT 20 % (included)" in shown
    assert "Discount" not in shown


def test_metadata_names_the_document_and_the_same_document_renders_the_same_bytes() -> None:
    data = pdf.render_invoice(invoice())
    meta = PdfReader(io.BytesIO(data)).metadata
    assert meta is not None
    assert meta.title == "Invoice LX-2026-000042"
    assert meta.creator == "LedgerX"
    assert pdf.render_invoice(invoice()) == data


def test_a_credit_note_is_titled_so() -> None:
    doc = invoice(title="Credit note", number="CN-2026-000007", notes=("Credit note for LX-2026-000042",))
    shown = text(pdf.render_invoice(doc))
    assert shown.startswith("Credit note")
    assert "CN-2026-000007" in shown and "Credit note for LX-2026-000042" in shown
    assert PdfReader(io.BytesIO(pdf.render_invoice(doc))).metadata.title == "Credit note CN-2026-000007"  # type: ignore[union-attr]


def test_a_long_invoice_flows_over_pages_with_each_line_once_and_the_header_repeated() -> None:
    per_page = pages(pdf.render_invoice(invoice(lines=120)))
    assert len(per_page) >= 3
    shown = "\n".join(per_page)
    for i in range(120):
        assert shown.count(f"Line {i:03d}:") == 1, i
    for n, page in enumerate(per_page, start=1):
        assert f"Page {n} of {len(per_page)}" in page
    # Every page that holds lines starts its table with the column titles.
    for page in per_page:
        if "Line " in page:
            assert "Description" in page and "Unit price" in page
    assert re.search(r"Amount due\s*USD 1,000\.00", per_page[-1])


def test_long_descriptions_and_unbreakable_words_wrap_inside_the_page() -> None:
    long = "Usage " + "metered API calls over the whole period " * 30
    word = "x" * 300
    doc = invoice(lines=0)
    doc = dataclasses.replace(doc, lines=(DocLine(long, 1, 5, 5), DocLine(word, 1, 5, 5)))
    data = pdf.render_invoice(doc)
    reader = PdfReader(io.BytesIO(data))
    shown = "\n".join(p.extract_text() for p in reader.pages)
    assert " ".join(shown.split()).count("metered API calls over the whole period") == 30
    assert shown.replace("\n", "").count(word) == 1  # cut into pieces, nothing lost
    # Nothing is drawn right of the page's right margin (A4: 595 pt wide, 15 mm = 42.5 pt margin).
    xs: list[float] = []
    for page in reader.pages:
        page.extract_text(visitor_text=lambda t, cm, tm, fd, fs: xs.append(tm[4] if t.strip() else 0))
    assert xs and max(xs) < 595 - 42


def test_overlong_labels_are_cut_and_huge_amounts_print_whole() -> None:
    doc = invoice(
        lines=1,
        total=123_456_789_012_345,
        amount_due=123_456_789_012_345,
        tax_lines=(DocTaxLine("Very long regional tax name " * 10, Decimal("5"), False, 1),),
    )
    shown = text(pdf.render_invoice(doc))
    assert "USD 1,234,567,890,123.45" in shown
    label = re.search(r"Very long regional tax name[^\n]*…", shown)
    assert label and label.group().count("Very long") < 3, shown  # cut to the label column (64 mm)


@pytest.mark.skipif(not DEJAVU, reason="DejaVu Sans is not installed: the core-font fallback prints '?'")
def test_non_latin_names_print_with_dejavu() -> None:
    for name in ("Łódź Sp. z o.o.", "ООО «Ромашка»", "Ελληνική Α.Ε."):
        shown = text(pdf.render_invoice(invoice(buyer=Party(name, ("ул. Ленина 1",)))))
        assert name in shown, name
        assert "ул. Ленина 1" in shown


@pytest.mark.skipif(not DEJAVU, reason="DejaVu Sans is not installed")
def test_characters_dejavu_lacks_print_as_question_marks() -> None:
    shown = text(pdf.render_invoice(invoice(buyer=Party("株式会社 Tanaka"))))
    assert "???? Tanaka" in shown


def test_without_dejavu_the_core_font_replaces_what_it_cannot_encode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(pdf, "FONT_DIR", tmp_path)
    doc = invoice(buyer=Party("Müller Łódź 株式会社", ("Hauptstraße 5",)))
    data = pdf.render_invoice(doc)
    assert b"DejaVu" not in data
    shown = text(data)
    assert "Müller ?ód? ????" in shown
    assert "2026-02-01 – 2026-03-01" in shown  # Windows-1252 has the en dash
    assert re.search(r"Amount due\s*USD 1,000\.00", shown)
    statement_text = text(pdf.render_statement(statement()))
    assert "Closing balance" in statement_text


def test_a_statement_shows_its_wallet_balances_and_entries() -> None:
    shown = text(pdf.render_statement(statement(entries=4)))
    assert "Wallet statement" in shown
    assert re.search(r"Wallet\s*Main wallet\s*Wallet ID\s*wal_7Hq2", shown)
    assert "2026-02-01 – 2026-03-01" in shown
    assert re.search(r"Opening balance\s*12,345 credits", shown)
    assert re.search(r"Credits\s*\+1,000 credits", shown)
    assert re.search(r"Debits\s*-1,500 credits", shown)
    assert re.search(r"Closing balance\s*11,845 credits", shown)
    assert re.search(r"2026-02-03\s*Entry 000 API calls\s*\+1,000 credits\s*12,345 credits", shown)
    assert re.search(r"2026-02-03\s*Entry 001 API calls\s*-500 credits\s*12,346 credits", shown)
    assert "Müller GmbH" in shown
    assert "more entries" not in shown


def test_a_truncated_statement_says_how_many_entries_are_left_out() -> None:
    shown = text(pdf.render_statement(statement(entries=2, truncated=1_250)))
    assert "1,250 more entries: see the API" in shown
    assert "1 more entry: see the API" in text(pdf.render_statement(statement(entries=2, truncated=1)))


def test_an_empty_statement_and_a_long_one() -> None:
    assert "No entries in this period." in text(pdf.render_statement(statement(entries=0)))
    per_page = pages(pdf.render_statement(statement(entries=150)))
    assert len(per_page) >= 3
    shown = "\n".join(per_page)
    for i in range(150):
        assert shown.count(f"Entry {i:03d} API calls") == 1, i


@pytest.mark.skipif(not DEJAVU, reason="DejaVu Sans is not installed")
def test_text_outside_the_cut_faces_embeds_the_full_faces() -> None:
    latin = pdf.render_invoice(invoice())
    armenian = pdf.render_invoice(invoice(buyer=Party("Հայաստան ՍՊԸ")))  # Armenian: in no cut
    assert "Հայաստան ՍՊԸ" in text(armenian)
    assert len(armenian) > len(latin)  # the full face's subset carries more (hinting, tables)


@pytest.mark.skipif(not DEJAVU, reason="DejaVu Sans is not installed")
def test_cut_faces_removed_under_a_running_process_are_cut_again() -> None:
    polish = invoice(buyer=Party("Łódź Sp. z o.o."))  # beyond Windows-1252, within the Latin cut
    pdf.render_invoice(polish)
    fonts = pdf._font_set()
    assert fonts is not None and fonts.cuts
    for faces in fonts.cuts.values():
        faces.regular.unlink()
    assert "Łódź Sp. z o.o." in text(pdf.render_invoice(polish))
    assert fonts.cuts[0].regular.is_file()  # the Latin cut, which this document embeds


def test_text_windows_1252_covers_uses_the_core_fonts_and_embeds_none() -> None:
    data = pdf.render_invoice(invoice())  # Müller GmbH, Hauptstraße, €-free amounts: all in cp1252
    assert "Müller GmbH" in text(data)
    reader = PdfReader(io.BytesIO(data))
    fonts = reader.pages[0]["/Resources"]["/Font"]
    names = {str(fonts[k].get_object()["/BaseFont"]) for k in fonts}
    assert names <= {"/Helvetica", "/Helvetica-Bold"}, names
    assert all("/FontDescriptor" not in fonts[k].get_object() for k in fonts)  # nothing embedded
    polish = pdf.render_invoice(invoice(buyer=Party("Łódź Sp. z o.o.")))
    if DEJAVU:
        pfonts = PdfReader(io.BytesIO(polish)).pages[0]["/Resources"]["/Font"]
        assert any("DejaVu" in str(pfonts[k].get_object()["/BaseFont"]) for k in pfonts)


def test_concurrent_renders_in_threads_give_the_serial_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # The server renders through asyncio.to_thread: renders must share nothing that one of them
    # changes (fpdf2 keeps a class-level glyph memo; the font cuts are made on first need, here by
    # the threads, and a new cut must give the same bytes).
    docs = [invoice(lines=3), invoice(lines=40, buyer=Party("Łódź Sp. z o.o.")), invoice(buyer=Party("Ωμέγα"))]
    expected = [pdf.render_invoice(doc) for doc in docs]
    monkeypatch.setattr(pdf, "_FONT_SETS", {})
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(pdf.render_invoice, docs * 8))
    assert got == expected * 8
