"""The authenticated caller of a request: a signed-in user or a project API key."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Literal


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    kind: Literal["user", "api_key"]
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    project_id: uuid.UUID | None = None  # set for API keys: the only project they can reach
    scopes: frozenset[str] = frozenset()
    session_id: str | None = None
