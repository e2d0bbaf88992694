"""Reading JSON request bodies at the edge: bounded size, bounded nesting, text PostgreSQL can store.

Every route that reads JSON from a client (`/graphql`, `POST /v1/usage`) goes through here, so the
same refusals hold everywhere and nothing malformed reaches the domain:

- a body larger than the route's limit is refused after reading at most that many bytes (the
  declared Content-Length is checked first, the stream is cut off at the limit);
- JSON nested deeper than `MAX_DEPTH` is refused (the decoder's own recursion limit would
  otherwise surface as an unexpected error, and no client document is that deep);
- `find_bad_text` finds strings (values or keys) PostgreSQL cannot store: the NUL character, which
  text columns refuse, and lone UTF-16 surrogates (`"\\ud800"`), which are not Unicode text and
  cannot be encoded as UTF-8. GraphQL variables are checked with it too (schema/pipeline.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

# Deeper than any document a client has reason to send (GraphQL variables, usage properties).
MAX_DEPTH = 64

# JSON text can carry a NUL or a surrogate only as a \u escape (raw control characters and invalid
# UTF-8 are refused by the decoder), so a body without these escapes needs no walk of its strings.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_SUSPECT_ESCAPE_TEXT = re.compile(_SUSPECT_ESCAPE.pattern.decode())


class BodyError(Exception):
    """The body cannot be used; `status` is 400 or 413, `path` names the offending value if any."""

    def __init__(self, status: int, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.path = path

    @property
    def field(self) -> str | None:
        return ".".join(str(p) for p in self.path) or None


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body; BodyError(413) once it is larger than `limit` bytes, reading no further."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyError(413, f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def loads(raw: bytes | str, *, parse_float: Callable[[str], Any] | None = None, check_text: bool = True) -> Any:
    """Decode JSON with bounded nesting; with `check_text`, refuse strings PostgreSQL cannot store."""
    try:
        value = json.loads(raw, parse_float=parse_float)
    except RecursionError:
        raise BodyError(400, f"the JSON body is nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BodyError(400, f"the body is not valid JSON ({exc})") from None
    pattern = _SUSPECT_ESCAPE_TEXT if isinstance(raw, str) else _SUSPECT_ESCAPE
    suspect = check_text and pattern.search(raw) is not None  # type: ignore[arg-type]
    problem = find_bad_text(value, check_text=suspect)
    if problem is not None:
        path, reason = problem
        raise BodyError(400, f"{'.'.join(str(p) for p in path) or 'the body'}: {reason}", path)
    return value


def find_bad_text(value: Any, *, check_text: bool = True) -> tuple[tuple[str | int, ...], str] | None:
    """The path to a string (value or key) PostgreSQL cannot store, or to where nesting passes
    MAX_DEPTH, with the reason; None when everything is fine. Iterative: no recursion limit."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if check_text and (reason := text_problem(item)) is not None:
                return path, reason
        elif isinstance(item, dict | list):
            if len(path) >= MAX_DEPTH:
                # Named by its top-level key only: the full path would be MAX_DEPTH items long.
                return path[:1], f"is nested more than {MAX_DEPTH} levels deep"
            if isinstance(item, dict):
                for key, inner in item.items():
                    if check_text and isinstance(key, str) and (reason := text_problem(key)) is not None:
                        return (*path, key), "(a name) " + reason
                    stack.append((inner, (*path, key)))
            else:
                stack.extend((inner, (*path, i)) for i, inner in enumerate(item))
    return None


def text_problem(text: str) -> str | None:
    """Why PostgreSQL could not store this text, or None."""
    if "\x00" in text:
        return "must not contain the NUL character (\\u0000)"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (it holds a lone UTF-16 surrogate such as \\ud800)"
    return None
