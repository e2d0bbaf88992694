"""Cursor pagination shared by every Relay connection: opaque cursors over sortable UUIDv7 ids."""

from __future__ import annotations

import base64
import binascii
import uuid

from ledgerx.domain.errors import BadInput

MAX_PAGE = 100


def page_size(first: int | None, default: int = 20) -> int:
    n = default if first is None else first
    if n < 1 or n > MAX_PAGE:
        raise BadInput(f"first must be between 1 and {MAX_PAGE}", field="first")
    return n


def encode_cursor(value: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(b"c:" + value.bytes).decode().rstrip("=")


def decode_cursor(cursor: str | None, field: str = "after") -> uuid.UUID | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise BadInput("malformed cursor", field=field) from None
    if len(raw) != 18 or not raw.startswith(b"c:"):
        raise BadInput("malformed cursor", field=field)
    return uuid.UUID(bytes=raw[2:])
