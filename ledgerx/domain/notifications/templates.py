"""A notification's subject, plain text and HTML, from the files in `templates/`.

Each kind has `<slug>.txt` (first line `Subject: ...`, a blank line, then the body) and
`<slug>.html` (the body's HTML, placed in `layout.html`); `footer.txt` / `footer.html` close every
mail. They are stdlib `string.Template`s: `$name` is a fact. In the HTML part every value is
escaped, so a project or wallet named `<script>` stays text. `substitute` is strict: a template
naming a fact its kind does not declare fails loudly (tests render every kind).
"""

from __future__ import annotations

import dataclasses
import functools
import html
from collections.abc import Mapping
from pathlib import Path
from string import Template

from ledgerx.domain.notifications.kinds import Kind

DIR = Path(__file__).resolve().parent / "templates"
_SUBJECT = "Subject: "


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


@functools.cache
def _template(name: str) -> Template:
    return Template((DIR / name).read_text(encoding="utf-8"))


@functools.cache
def _text_parts(kind: Kind) -> tuple[Template, Template]:
    """(subject, body) of the kind's plain-text template."""
    raw = (DIR / f"{kind.slug}.txt").read_text(encoding="utf-8")
    first, _, body = raw.partition("\n")
    if not first.startswith(_SUBJECT):
        raise ValueError(f"templates/{kind.slug}.txt must start with a 'Subject: ' line")
    return Template(first[len(_SUBJECT) :].strip()), Template(body.lstrip("\n"))


def render(kind: Kind, facts: Mapping[str, str]) -> Rendered:
    subject_t, body_t = _text_parts(kind)
    escaped = {k: html.escape(v, quote=True) for k, v in facts.items()}
    subject = " ".join(subject_t.substitute(facts).split())  # one line, whatever the facts hold
    text = body_t.substitute(facts).rstrip("\n") + "\n\n" + _template("footer.txt").substitute(facts)
    page = _template("layout.html").substitute(
        subject=html.escape(subject),
        content=_template(f"{kind.slug}.html").substitute(escaped).rstrip("\n"),
        footer=_template("footer.html").substitute(escaped).rstrip("\n"),
    )
    return Rendered(subject, text, page)
