"""Stripe event bodies as JSON PostgreSQL can store: bounded, finite, free of NUL and lone surrogates.

A signed body is still arbitrary JSON to us (a leaked secret, a replayed test event, a customer
typing odd characters into Checkout), and several of its shapes break the inbox with a 500 rather
than an answer: nesting deep enough to exhaust the parser's recursion or orjson's/PostgreSQL's
depth limits, `\\u0000` (refused by PostgreSQL in `jsonb` and `text`), lone surrogates (not UTF-8),
`NaN`/`Infinity` (not JSON), and ids too long for the unique index. `parse` turns each into a
`Refused` with a reason the route sends back as a 400; `clean` is the same walk for events that
come from Stripe's API (reconciliation), so every path into the inbox stores only what fits.

Text inside the event (names, addresses, custom fields) keeps the event: NUL and lone surrogates
become U+FFFD there, because refusing the whole event would lose a real payment for one odd
character. The envelope's `id` and `type` are ours to index and are never rewritten: a NUL or a
control character there means the body is not a Stripe event.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Stripe's events nest about a dozen levels (event > data > object > lines > data > price > ...);
# anything past this is not an event we act on.
MAX_DEPTH = 64
MAX_ID_LENGTH = 255

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


class Refused(ValueError):
    """The body cannot be stored as an event; `reason` is the answer's text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _text(value: str) -> str:
    return _UNSTORABLE.sub("\ufffd", value) if _UNSTORABLE.search(value) else value


def _walk(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict | list) and depth >= MAX_DEPTH:
        raise Refused(f"not a Stripe event: nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        return {_text(str(k)): _walk(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, depth + 1) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise Refused("not a Stripe event: a number is not finite")
    return value


def _envelope_text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise Refused(f"not a Stripe event: no {key}")
    if len(value) > MAX_ID_LENGTH:
        raise Refused(f"not a Stripe event: its {key} is longer than {MAX_ID_LENGTH} characters")
    if _CONTROL.search(value):
        what = "a NUL character" if "\x00" in value else "a control character"
        raise Refused(f"not a Stripe event: its {key} holds {what}")
    return value


def clean(body: Any) -> dict[str, Any]:
    """The event as it can be stored (see the module doc); raises `Refused`."""
    if not isinstance(body, dict) or body.get("object", "event") != "event":
        raise Refused("not a Stripe event")
    _envelope_text(body, "id")
    _envelope_text(body, "type")
    if isinstance(body.get("created"), bool) or not isinstance(body.get("created"), int):
        raise Refused("not a Stripe event: no created time")
    if not isinstance(body.get("data"), dict):
        raise Refused("not a Stripe event: no data")
    out: dict[str, Any] = _walk(body, 0)
    return out


def parse(payload: bytes) -> dict[str, Any]:
    """A verified body as a storable event; raises `Refused` with the reason."""
    try:
        # `parse_constant` refuses NaN and Infinity, which Python reads but JSON has not.
        body = json.loads(payload, parse_constant=_no_constant)
    except RecursionError:
        # The C parser gives up at about 1000 levels; cheaper than counting brackets first.
        raise Refused(f"not a Stripe event: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:
        raise Refused("not a Stripe event: the body is not JSON") from None
    return clean(body)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
