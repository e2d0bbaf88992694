"""The PDFs of invoices, credit notes and wallet statements (fpdf2), drawn from the frozen values in
`documents.py` and nothing else.

Fonts. DejaVu Sans (regular and bold) is embedded when the system has it, else the PDF core font
Helvetica is used and what Windows-1252 cannot encode prints as "?" (a render never fails on a
name); characters DejaVu lacks (CJK) print as "?" too. Embedding is what a render costs: fpdf2
parses the TTF in `add_font` and fontTools subsets it in `output`, both in time growing with the
glyphs of the *source* font (DejaVu Sans has ~6,000: ~80 ms a document). fpdf2 cannot share a parsed
font between documents (`output` subsets it in place), so the cache is one level down: on first
need, each face is cut once per process into a private temporary directory, to Latin-script text
(`LATIN`, ~400 glyphs) and to Latin, Greek and Cyrillic (`WIDE`); a document embeds the smallest
cut that holds its text (a 5-line Latin invoice: ~4x faster than the full faces), else the full
faces. Measured figures: bench/invoices.py.

Thread safety: every render builds its own FPDF; the only shared state is that font cache, built
under a lock, and fpdf2's class-level glyph memo (`functools.cache`, thread-safe). Concurrent calls
(`asyncio.to_thread`) are safe; they do not run in parallel (fpdf2 and fontTools are pure Python).
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import decimal
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from fontTools import subset as ft_subset  # type: ignore[import-untyped]  # fontTools ships no types
from fontTools import ttLib
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import TTFFont

from ledgerx.domain.invoicing.documents import (
    DocLine,
    InvoiceDocument,
    Party,
    StatementDocument,
    StatementEntry,
)
from ledgerx.domain.notifications.amounts import amount

# Read at each render (tests point it elsewhere to see the core-font fallback).
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
REGULAR_FILE = "DejaVuSans.ttf"
BOLD_FILE = "DejaVuSans-Bold.ttf"

# The cuts, smallest first: a document embeds the first cut that holds every character of its
# text DejaVu can draw (the rest prints as "?"), else the full faces. Each is cut on first need.
LATIN = (
    (0x20, 0x7E),  # Basic Latin
    (0xA0, 0x17F),  # Latin-1, Latin Extended-A (Polish, Czech, Turkish, …)
    (0x2010, 0x2027),  # dashes (the en dash of periods), quotes, ellipsis
    (0x2030, 0x203A),
    (0x20AC, 0x20AC),  # €
    (0x2116, 0x2116),  # №
    (0x2122, 0x2122),  # ™
    (0x2212, 0x2212),  # minus
    (0xFFFD, 0xFFFD),
)
WIDE = (
    *LATIN,
    (0x180, 0x24F),  # Latin Extended-B (Romanian ș ț, …)
    (0x300, 0x36F),  # combining diacritics
    (0x370, 0x3FF),  # Greek
    (0x400, 0x52F),  # Cyrillic
    (0x1E00, 0x1EFF),  # Latin Extended Additional (Vietnamese)
    (0x20A0, 0x20CF),  # currency signs
    (0x2100, 0x214F),  # letterlike
)
CUTS: tuple[frozenset[int], ...] = tuple(
    frozenset(c for lo, hi in ranges for c in range(lo, hi + 1)) for ranges in (LATIN, WIDE)
)

PAGE_MARGIN = 15.0  # mm, A4 210 x 297
BOTTOM_MARGIN = 18.0  # room for the footer
WIDTH = 210.0 - 2 * PAGE_MARGIN
LINE_H = 4.6  # a 9 pt text line
SUB_H = 3.8  # a 7.5 pt line (periods under descriptions)
ROW_PAD = 1.3
MAX_WRAPPED_LINES = 40  # a description longer than this is cut with "…" so a row fits one page
MAX_PARTY_LINES = 14  # address, tax id and email lines printed for a party
GREY = 110
RULE = 215

EN_DASH = "\u2013"

Align = Literal["L", "R"]


# -- fonts ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Faces:
    regular: Path
    bold: Path
    covers: frozenset[int]  # code points both faces draw


@dataclasses.dataclass
class _FontSet:
    """DejaVu's full faces and the cuts made so far (in a private temporary directory)."""

    full: _Faces
    work: Path
    cuts: dict[int, _Faces] = dataclasses.field(default_factory=dict)

    def faces(self, used: set[int]) -> _Faces:
        drawable = used & self.full.covers
        tier = next((i for i, cut in enumerate(CUTS) if drawable <= cut), None)
        if tier is None:
            return self.full
        with _FONT_LOCK:
            faces = self.cuts.get(tier)
            # A long-running server's temporary directory may be cleaned under it: then cut again.
            if faces is None or not (faces.regular.is_file() and faces.bold.is_file()):
                self.work.mkdir(parents=True, exist_ok=True)
                regular = self.work / f"{tier}-{REGULAR_FILE}"
                bold = self.work / f"{tier}-{BOLD_FILE}"
                covers = _cut(self.full.regular, regular, CUTS[tier]) & _cut(self.full.bold, bold, CUTS[tier])
                faces = self.cuts[tier] = _Faces(regular, bold, covers)
            return faces


_FONT_LOCK = threading.Lock()
_FONT_SETS: dict[Path, _FontSet | None] = {}


def _cmap(font: ttLib.TTFont) -> frozenset[int]:
    return frozenset(font.getBestCmap() or ())


def _cut(source: Path, target: Path, keep: frozenset[int]) -> frozenset[int]:
    """Writes `source` reduced to `keep` (no hinting, no layout tables: fpdf2 drops those anyway;
    glyph names kept: without them fontTools derives them from the cmap at every load, slower)."""
    options = ft_subset.Options(notdef_outline=True, recommended_glyphs=True, hinting=False, glyph_names=True)
    options.layout_features = []
    options.drop_tables += ["GSUB", "GPOS", "GDEF", "FFTM", "hdmx", "kern"]
    font = ttLib.TTFont(source, recalcTimestamp=False)  # the same cut, the same bytes in every process
    subsetter = ft_subset.Subsetter(options)
    subsetter.populate(unicodes=sorted(keep))
    subsetter.subset(font)
    font.save(target)
    return _cmap(font)


def _font_set() -> _FontSet | None:
    font_dir = FONT_DIR
    with _FONT_LOCK:
        if font_dir not in _FONT_SETS:
            regular, bold = font_dir / REGULAR_FILE, font_dir / BOLD_FILE
            found = None
            if regular.is_file() and bold.is_file():
                covers = _cmap(ttLib.TTFont(regular, lazy=True)) & _cmap(ttLib.TTFont(bold, lazy=True))
                work = Path(tempfile.mkdtemp(prefix="ledgerx-fonts-"))
                atexit.register(shutil.rmtree, work, True)
                found = _FontSet(_Faces(regular, bold, covers), work)
            _FONT_SETS[font_dir] = found
        return _FONT_SETS[font_dir]


def _windows_1252() -> frozenset[int]:
    chars = set()
    for b in range(0x20, 0x100):
        try:
            chars.add(ord(bytes([b]).decode("cp1252")))
        except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined
            continue
    return frozenset(chars)


CORE_COVERS = _windows_1252()


# -- formatting -------------------------------------------------------------------------------------


def _date(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d")


def _period(start: dt.datetime, end: dt.datetime) -> str:
    return f"{_date(start)} {EN_DASH} {_date(end)}"


def _rate(rate: decimal.Decimal) -> str:
    # normalize() alone prints 20 as 2E+1; the "f" format never uses an exponent.
    return f"{rate.normalize():f} %"


def _signed(minor: int, currency: str) -> str:
    return f"+{amount(minor, currency)}" if minor > 0 else amount(minor, currency)


# -- the page ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Col:
    title: str
    width: float
    align: Align


@dataclasses.dataclass(frozen=True)
class _Row:
    cells: tuple[str, ...]
    sub: str | None = None  # small grey text under the wrapped column (a line's period)


class _Pdf(FPDF):
    """An A4 page with a footer naming the document and the page; text goes through `clean`."""

    def __init__(self, faces: _Faces | None, footer: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self._covers = faces.covers if faces is not None else CORE_COVERS
        self._family = "helvetica"
        if faces is not None:
            self.add_font("dejavu", "", faces.regular)
            self.add_font("dejavu", "B", faces.bold)
            self._family = "dejavu"
            for font in self.fonts.values():
                assert isinstance(font, TTFFont)
                # The glyphs' boxes are right in the file: recomputing them at `output` expands and
                # recompiles every embedded glyph (a third of a short invoice's render).
                font.ttfont.recalcBBoxes = False
        else:
            self.core_fonts_encoding = "windows-1252"
        self.set_margins(PAGE_MARGIN, PAGE_MARGIN, PAGE_MARGIN)
        self.set_auto_page_break(True, BOTTOM_MARGIN)
        self.set_creator("LedgerX")
        self._footer = self.clean(footer)
        self._widths: dict[tuple[str, str, float, str], float] = {}

    def clean(self, text: str) -> str:
        """One line of text the font can draw: controls become spaces, the rest it lacks "?"."""
        covers = self._covers
        return "".join(c if ord(c) in covers else " " if c < " " or c == "\x7f" else "?" for c in text)

    def width_of(self, text: str) -> float:
        """`get_string_width`, remembered: it costs ~12 µs a call and a table measures the same words
        (and amounts) over and over."""
        key = (self.font_family, self.font_style, self.font_size_pt, text)
        found = self._widths.get(key)
        if found is None:
            found = self._widths[key] = self.get_string_width(text)
        return found

    def use(self, size: float = 9, bold: bool = False, grey: int = 0) -> None:
        self.set_font(self._family, "B" if bold else "", size)
        self.set_text_color(grey)

    def footer(self) -> None:
        self.set_y(-12)
        self.use(7.5, grey=GREY)
        self.cell(WIDTH / 2, 4, self.fit(WIDTH / 2, self._footer))
        self.cell(WIDTH / 2, 4, f"Page {self.page_no()} of {{nb}}", align="R")

    def wrap(self, width: float, text: str) -> list[str]:
        """`text` broken at spaces into the lines a `width` mm column holds in the current font.

        Our own greedy wrap, not multi_cell's: fpdf2 re-measures the line at every character (a
        60-line invoice spent 80% of its render there); fpdf2 does not kern, so widths add up."""
        room = width - 2 * self.c_margin
        space = self.width_of(" ")
        lines: list[str] = []
        line, line_w = "", 0.0
        for word in self.clean(text).split():
            word_w = self.width_of(word)
            if line and line_w + space + word_w <= room:
                line, line_w = f"{line} {word}", line_w + space + word_w
                continue
            if line:
                lines.append(line)
            while word_w > room:  # a word wider than the column (an id, a URL): cut it
                cut = self._fitting_prefix(word, room)
                lines.append(word[:cut])
                word = word[cut:]
                word_w = self.width_of(word)
            line, line_w = word, word_w
        if line or not lines:
            lines.append(line)
        if len(lines) > MAX_WRAPPED_LINES:
            lines = [*lines[: MAX_WRAPPED_LINES - 1], self.fit(width, lines[MAX_WRAPPED_LINES - 1] + " …")]
        return lines

    def _fitting_prefix(self, word: str, room: float) -> int:
        used = 0.0
        for n, char in enumerate(word):
            used += self.width_of(char)
            if used > room:
                return max(n, 1)
        return len(word)

    def put(self, x: float, top: float, width: float, height: float, text: str, align: Align = "L") -> None:
        """One line of already clean text in the box (x, top, width, height), with no cell: fpdf2's
        `cell` costs ~8x `text`, and a long table draws hundreds of them."""
        if align == "R":
            x += width - self.c_margin - self.width_of(text)
        else:
            x += self.c_margin
        self.text(x, top + 0.5 * height + 0.3 * self.font_size, text)

    def fit(self, width: float, text: str) -> str:
        """`text` cut with "…" to fit `width` (for labels only: amounts shrink instead, `fit_put`)."""
        room = width - 2 * self.c_margin
        if self.width_of(text) <= room:
            return text
        return text[: self._fitting_prefix(text, room - self.width_of("…"))] + "…"

    def fit_put(self, x: float, top: float, width: float, height: float, text: str, align: Align = "R") -> None:
        """`put`, the font shrinking (down to 5 pt) rather than the text overflowing: amounts."""
        size = self.font_size_pt
        room = width - 2 * self.c_margin
        while size > 5 and self.width_of(text) > room:
            self.set_font_size(size := size - 0.5)
        self.put(x, top, width, height, text, align)

    def ensure_room(self, height: float) -> bool:
        """Starts a page when `height` mm do not fit under the cursor; True when it did."""
        if self.get_y() + height > self.page_break_trigger:
            self.add_page()
            return True
        return False

    def rule(self, y: float, x0: float = PAGE_MARGIN, x1: float = PAGE_MARGIN + WIDTH, shade: int = RULE) -> None:
        self.set_draw_color(shade)
        self.set_line_width(0.2)
        self.line(x0, y, x1, y)


def _heading(pdf: _Pdf, title: str, right: str, facts: Iterable[tuple[str, str]]) -> None:
    pdf.use(20, bold=True)
    pdf.cell(WIDTH * 0.65, 10, pdf.fit(WIDTH * 0.65, pdf.clean(title)))
    pdf.use(11, bold=True, grey=60)
    pdf.cell(WIDTH * 0.35, 10, pdf.fit(WIDTH * 0.35, pdf.clean(right)), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)
    for label, value in facts:
        pdf.use(9, grey=GREY)
        pdf.cell(24, LINE_H, label)
        pdf.use(9)
        pdf.cell(WIDTH - 24, LINE_H, pdf.fit(WIDTH - 24, pdf.clean(value)), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(5)


def _party_lines(party: Party) -> Iterator[str]:
    yield from party.address
    yield from party.tax_ids
    if party.email:
        yield party.email


def _parties(pdf: _Pdf, left: tuple[str, Party], right: tuple[str, Party]) -> None:
    top = pdf.get_y()
    column = (WIDTH - 10) / 2
    bottoms = []
    for x, (caption, party) in ((PAGE_MARGIN, left), (PAGE_MARGIN + column + 10, right)):
        pdf.set_xy(x, top)
        pdf.use(7.5, bold=True, grey=GREY)
        pdf.cell(column, 4, caption.upper(), new_x=XPos.LEFT, new_y=YPos.NEXT)
        y = pdf.get_y()
        pdf.use(10, bold=True)
        for line in pdf.wrap(column, party.name)[:3]:
            pdf.put(x, y, column, 5, line)
            y += 5
        pdf.use(9)
        lines = [line for text in _party_lines(party) for line in pdf.wrap(column, text)]
        if len(lines) > MAX_PARTY_LINES:  # the block must leave the page room for the table
            lines = [*lines[: MAX_PARTY_LINES - 1], "…"]
        for line in lines:
            pdf.put(x, y, column, LINE_H, line)
            y += LINE_H
        bottoms.append(y)
    pdf.set_xy(PAGE_MARGIN, max(bottoms) + 6)


def _table_header(pdf: _Pdf, cols: tuple[_Col, ...]) -> None:
    pdf.use(8, bold=True, grey=60)
    pdf.set_fill_color(242)
    pdf.set_x(PAGE_MARGIN)
    for col in cols:
        pdf.cell(col.width, 6.5, col.title, align=col.align, fill=True)
    pdf.ln(6.5)
    pdf.rule(pdf.get_y(), shade=170)


def _table(pdf: _Pdf, cols: tuple[_Col, ...], rows: Iterable[_Row], wrap: int, empty: str) -> None:
    """Rows under a header repeated on every page; column `wrap` wraps, a row never splits."""
    pdf.ensure_room(6.5 + 3 * LINE_H)
    _table_header(pdf, cols)
    wrap_x = PAGE_MARGIN + sum(c.width for c in cols[:wrap])
    wrap_w = cols[wrap].width
    drawn = 0
    for row in rows:
        pdf.use(9)
        lines = pdf.wrap(wrap_w, row.cells[wrap])
        pdf.use(7.5)
        subs = pdf.wrap(wrap_w, row.sub) if row.sub else []
        height = 2 * ROW_PAD + len(lines) * LINE_H + len(subs) * SUB_H
        if pdf.ensure_room(height):
            _table_header(pdf, cols)
        top = pdf.get_y() + ROW_PAD
        x = PAGE_MARGIN
        for i, col in enumerate(cols):
            pdf.use(9)
            if i == wrap:
                for n, line in enumerate(lines):
                    pdf.put(x, top + n * LINE_H, col.width, LINE_H, line)
            else:
                pdf.fit_put(x, top, col.width, LINE_H, pdf.clean(row.cells[i]), col.align)
            x += col.width
        pdf.use(7.5, grey=GREY)
        for n, line in enumerate(subs):
            pdf.put(wrap_x, top + len(lines) * LINE_H + n * SUB_H, wrap_w, SUB_H, line)
        bottom = top + height - ROW_PAD
        pdf.rule(bottom)
        pdf.set_xy(PAGE_MARGIN, bottom)
        drawn += 1
    if not drawn:
        pdf.use(9, grey=GREY)
        pdf.cell(WIDTH, 8, empty, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)


def _summary(pdf: _Pdf, rows: list[tuple[str, str, bool]], x: float, label_w: float, value_w: float) -> None:
    """Label/amount rows (bold ones after a rule), kept together on one page."""
    height = len(rows) * 5.6 + 2
    pdf.ensure_room(height)
    for label, value, strong in rows:
        if strong:
            pdf.rule(pdf.get_y() + 0.3, x, x + label_w + value_w)
        pdf.set_x(x)
        pdf.use(9.5 if strong else 9, bold=strong)
        top = pdf.get_y()
        pdf.put(x, top, label_w, 5.6, pdf.fit(label_w, pdf.clean(label)))
        pdf.fit_put(x + label_w, top, value_w, 5.6, pdf.clean(value))
        pdf.ln(5.6)
    pdf.ln(3)


def _notes(pdf: _Pdf, notes: Iterable[str]) -> None:
    pdf.use(8.5, grey=60)
    for note in notes:
        for line in pdf.wrap(WIDTH, note):
            pdf.ensure_room(4.2)
            pdf.put(PAGE_MARGIN, pdf.get_y(), WIDTH, 4.2, line)
            pdf.ln(4.2)
        pdf.ln(1)


def _faces_for(texts: Iterable[str]) -> _Faces | None:
    """The faces to embed, or None for the PDF core fonts. A document whose text Windows-1252 covers
    (most Western names and addresses) uses Helvetica, which every PDF reader has built in: nothing
    is embedded, and a render costs a third of one that embeds even a cut face (bench/invoices.py).
    Other scripts (Polish, Greek, Cyrillic …) embed DejaVu Sans."""
    used = {ord(c) for text in texts for c in text}
    if used <= CORE_COVERS:
        return None
    fonts = _font_set()
    if fonts is None:
        return None
    return fonts.faces(used)


def _party_texts(party: Party) -> Iterator[str]:
    yield party.name
    yield from _party_lines(party)


def _finish(pdf: _Pdf, title: str, author: str, at: dt.datetime) -> bytes:
    pdf.set_title(title)
    pdf.set_author(author)
    # The file id hashes the content and this date: the same document renders to the same bytes.
    pdf.set_creation_date(at.astimezone(dt.UTC))
    return bytes(pdf.output())


# -- invoices and credit notes ----------------------------------------------------------------------

INVOICE_COLS = (
    _Col("Description", WIDTH - 16 - 2 * 36, "L"),
    _Col("Qty", 16, "R"),
    _Col("Unit price", 36, "R"),
    _Col("Amount", 36, "R"),
)


def _line_row(line: DocLine, currency: str) -> _Row:
    period = (
        _period(line.period_start, line.period_end)
        if line.period_start is not None and line.period_end is not None
        else None
    )
    return _Row(
        (line.description, f"{line.quantity:,}", amount(line.unit_amount, currency), amount(line.amount, currency)),
        period,
    )


def _totals(doc: InvoiceDocument) -> list[tuple[str, str, bool]]:
    money = doc.currency
    rows = [("Subtotal", amount(doc.subtotal, money), False)]
    if doc.discount:
        rows.append(("Discount", amount(-doc.discount, money), False))
    for tax in doc.tax_lines:
        how = "included" if tax.inclusive else "exclusive"
        rows.append((f"{tax.name} {_rate(tax.rate)} ({how})", amount(tax.amount, money), False))
    rows += [
        ("Tax total", amount(doc.tax, money), False),
        ("Total", amount(doc.total, money), True),
        ("Amount paid", amount(doc.amount_paid, money), False),
        ("Amount due", amount(doc.amount_due, money), True),
    ]
    return rows


def render_invoice(doc: InvoiceDocument) -> bytes:
    """The PDF of an invoice or a credit note."""
    texts = [doc.title, doc.number, doc.status, doc.currency, *doc.notes]
    texts += [*_party_texts(doc.seller), *_party_texts(doc.buyer)]
    texts += [line.description for line in doc.lines] + [tax.name for tax in doc.tax_lines]
    pdf = _Pdf(_faces_for(texts), f"{doc.title} {doc.number}")
    pdf.add_page()
    facts = [("Number", doc.number), ("Issued", _date(doc.issued_at))]
    if doc.period_start is not None and doc.period_end is not None:
        facts.append(("Period", _period(doc.period_start, doc.period_end)))
    _heading(pdf, doc.title, doc.status, facts)
    _parties(pdf, ("From", doc.seller), ("Bill to", doc.buyer))
    _table(pdf, INVOICE_COLS, (_line_row(line, doc.currency) for line in doc.lines), 0, "No lines.")
    _summary(pdf, _totals(doc), PAGE_MARGIN + WIDTH - 100, 64, 36)
    _notes(pdf, doc.notes)
    return _finish(pdf, f"{doc.title} {doc.number}", doc.seller.name, doc.issued_at)


# -- wallet statements ------------------------------------------------------------------------------

STATEMENT_COLS = (
    _Col("Date", 24, "L"),
    _Col("Description", WIDTH - 24 - 2 * 36, "L"),
    _Col("Amount", 36, "R"),
    _Col("Balance", 36, "R"),
)
CREDITS = "CREDITS"


def _entry_row(entry: StatementEntry) -> _Row:
    return _Row(
        (_date(entry.at), entry.description, _signed(entry.amount, CREDITS), amount(entry.balance_after, CREDITS))
    )


def render_statement(doc: StatementDocument) -> bytes:
    """The PDF of a wallet's statement over its period."""
    texts = [doc.wallet_name, doc.wallet_id, *_party_texts(doc.seller), *_party_texts(doc.buyer)]
    texts += [entry.description for entry in doc.entries]
    period = _period(doc.period_start, doc.period_end)
    pdf = _Pdf(_faces_for(texts), f"Statement {doc.wallet_id} {period}")
    pdf.add_page()
    facts = [
        ("Wallet", doc.wallet_name),
        ("Wallet ID", doc.wallet_id),
        ("Period", period),
        ("Generated", _date(doc.generated_at)),
    ]
    _heading(pdf, "Wallet statement", "", facts)
    _parties(pdf, ("From", doc.seller), ("Account", doc.buyer))
    summary = [
        ("Opening balance", amount(doc.opening_balance, CREDITS), False),
        ("Credits", _signed(doc.credits, CREDITS), False),
        ("Debits", amount(-doc.debits, CREDITS), False),
        ("Closing balance", amount(doc.closing_balance, CREDITS), True),
    ]
    _summary(pdf, summary, PAGE_MARGIN, 50, 44)
    pdf.ln(2)
    _table(pdf, STATEMENT_COLS, (_entry_row(e) for e in doc.entries), 1, "No entries in this period.")
    if doc.truncated > 0:
        more = "1 more entry" if doc.truncated == 1 else f"{doc.truncated:,} more entries"
        _notes(pdf, [f"{more}: see the API"])
    return _finish(pdf, f"Statement {doc.wallet_name} {period}", doc.seller.name, doc.generated_at)
