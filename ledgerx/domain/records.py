"""Rows to records: every domain hands its callers plain, frozen records, never an ORM row or a
database session (the GraphQL layer builds its types from records alone)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_R = TypeVar("_R", bound="DataclassInstance")


def of(record: type[_R], row: object, **derived: Any) -> _R:
    """The record of a row: its columns by the record's field names, read now (the row may be
    detached afterwards, or changed by the session that loaded it); `derived` gives the fields
    that are not a column as it is."""
    values = {
        f.name: derived[f.name] if f.name in derived else getattr(row, f.name) for f in dataclasses.fields(record)
    }
    return record(**values)
