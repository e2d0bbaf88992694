"""The checked-in schema.graphql is what the code serves.

Regenerate it with `ledgerx export-schema -o schema.graphql`.
"""

from __future__ import annotations

from pathlib import Path

from ledgerx.graphql_schema import build_schema, schema_sdl
from ledgerx.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_schema_graphql_matches_the_code() -> None:
    checked_in = (ROOT / "schema.graphql").read_text()
    assert checked_in == schema_sdl(), "schema.graphql drifted: run `.venv/bin/ledgerx export-schema -o schema.graphql`"


def test_introspection_can_be_switched_off() -> None:
    result = build_schema(Settings(graphql_introspection=False)).execute_sync("{ __schema { types { name } } }")
    assert result.errors
