"""One module names every event-bus topic (ledgerx/domain/topics.py): no topic is spelled by hand
anywhere else in ledgerx/, so a topic cannot be published under one name and heard under another."""

from __future__ import annotations

import ast
import inspect
import uuid
from pathlib import Path

import ledgerx
from ledgerx.domain import topics

PACKAGE = Path(ledgerx.__file__).parent
TOPICS_MODULE = Path(topics.__file__)
_SAMPLE = uuid.UUID("00000000-0000-7000-8000-00000000abcd")


def topic_shapes() -> set[str]:
    """Every topic topics.py names, an id shown as `{}` (`project:{}:usage`, `platform:revenue`)."""
    shapes: set[str] = set()
    for name, value in vars(topics).items():
        if name.startswith("_"):
            continue
        if isinstance(value, str) and ":" in value:
            shapes.add(value)
        elif _names_a_topic(value):
            shapes.add(value(_SAMPLE).replace(str(_SAMPLE), "{}"))
    return shapes


def _names_a_topic(value: object) -> bool:
    """A function of topics.py that takes an id and returns a topic (`project_usage`)."""
    return (
        inspect.isfunction(value)
        and value.__module__ == topics.__name__
        and value.__annotations__.get("return") == "str"
        and len(inspect.signature(value).parameters) == 1
    )


def _shape(node: ast.AST) -> str | None:
    """A string literal's text, each formatted value shown as `{}`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            part.value if isinstance(part, ast.Constant) and isinstance(part.value, str) else "{}"
            for part in node.values
        )
    return None


class TopicLike:
    """Whether a literal spells (part of) a topic: one of the names, a prefix of the id-bearing
    ones (`project:`, alone or followed by an id or `*`) or an id followed by their suffix
    (`{id}:transactions`)."""

    def __init__(self, shapes: set[str]) -> None:
        self.exact = {s for s in shapes if "{}" not in s and "*" not in s}
        templated = shapes - self.exact
        self.prefixes = {s.split(":", 1)[0] + ":" for s in templated}
        self.suffixes = {":" + s.rsplit(":", 1)[1] for s in templated if s.count(":") >= 2}

    def __call__(self, shape: str) -> bool:
        if shape in self.exact:
            return True
        if any(shape == p or shape.startswith((p + "{}", p + "*")) for p in self.prefixes):
            return True
        return any(shape.endswith("{}" + s) for s in self.suffixes)


def hand_made_topics(source: str, is_topic: TopicLike) -> list[tuple[int, str]]:
    """(line, literal) of every string literal in `source` that spells a topic."""
    tree = ast.parse(source)
    # The pieces of an f-string are judged as the whole it makes, not one by one.
    pieces = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        shape = _shape(node) if id(node) not in pieces else None
        if shape is not None and is_topic(shape):
            found.append((getattr(node, "lineno", 0), shape))
    return sorted(found)


def test_every_topic_has_a_name_in_the_topics_module() -> None:
    shapes = topic_shapes()
    assert {
        "project:{}:transactions",
        "wallet:{}",
        "project:{}:low_balance",
        "project:{}:usage",
        "project:{}:billing",
        "project:{}:subscription",
        "project:{}:payments",
        "project:{}:members",
        "project:*:members",
        "project:*:subscription",
        "project:*:payments",
        "platform:revenue",
        "platform:plan_changes",
        "auth:sessions_revoked",
    } <= shapes


def test_no_topic_is_spelled_outside_the_topics_module() -> None:
    is_topic = TopicLike(topic_shapes())
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == TOPICS_MODULE:
            continue
        for line, literal in hand_made_topics(path.read_text(), is_topic):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {literal!r}")
    assert offenders == [], "topics spelled by hand (use ledgerx.domain.topics):\n" + "\n".join(offenders)


def test_the_check_finds_topics_spelled_by_hand() -> None:
    is_topic = TopicLike(topic_shapes())
    source = """
await bus.publish(f"project:{project_id}:usage", event)
async with bus.subscribe("project:*:members", pattern=True): ...
channel = "wallet:" + str(wallet_id)
topic = f"{prefix}{project_id}:transactions"
bus.publish("auth:sessions_revoked", {})
"""
    assert [line for line, _ in hand_made_topics(source, is_topic)] == [2, 3, 4, 5, 6]
    # Look-alikes that are not topics: scope names, rate-limit buckets, lock and idempotency keys.
    source = 's = "project:read"; k = f"user:{u}"; n = f"ledgerx:default-wallet:{p}"; i = key + ":subscription"'
    assert hand_made_topics(source, is_topic) == []
