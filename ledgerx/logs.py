"""Structured JSON logs; every line carries the request id of the request that wrote it."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# What the request being served did, for the one line the middleware logs when it ends. A mutable
# holder: a value noted in a task the request spawned (websocket operations run in their own
# tasks, which copy the context) still reaches the middleware.
request_info_var: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("request_info", default=None)

_MAX_NAME = 100  # operation names come from clients
_MAX_NAMES = 20  # distinct names kept per websocket


def note_operation(name: str | None) -> None:
    """The GraphQL layer reports each operation's name (None for an anonymous one)."""
    info = request_info_var.get()
    if info is None:
        return
    info["count"] = info.get("count", 0) + 1
    if name:
        names: list[str] = info.setdefault("names", [])
        name = name[:_MAX_NAME]
        if name not in names and len(names) < _MAX_NAMES:
            names.append(name)


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "httpx", "httpcore", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn installs its own handlers; route them through ours.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
