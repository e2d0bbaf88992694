"""Validation of usage input: metric keys, unit prices, units, idempotency keys, event times, properties.

Bulk ingestion validates thousands of events per request in Python before one set-based insert,
so `check_event` is written for speed: plain type checks, no regular expressions on the hot path,
and exceptions only for events that are refused.

The event wire format (bulk JSON and, field for field, the GraphQL inputs):
    {"metricKey": "api_calls", "units": 3 | "0.5", "idempotencyKey": "...",
     "occurredAt": "2026-01-01T12:00:00Z" (optional), "properties": {...} (optional)}
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from ledgerx.domain.errors import AppError, BadInput, NotFound
from ledgerx.domain.numbers import DECIMAL_TEXT
from ledgerx.domain.usage.types import Aggregation, MetricRecord, Rejection

METRIC_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
KEY_MAX = 255
UNITS_MAX = decimal.Decimal(10) ** 15
UNITS_MAX_PLACES = 9
PRICE_MAX = decimal.Decimal(10) ** 9
PRICE_MAX_PLACES = 12
PROPERTIES_MAX_BYTES = 8 * 1024
UNIQUE_VALUE_MAX = 512
EVENT_FIELDS = frozenset({"metricKey", "units", "idempotencyKey", "occurredAt", "properties"})

# Stable reasons (extensions.reason / rejected[].reason) for the refusals clients handle in code.
TOO_OLD = "OCCURRED_AT_TOO_OLD"
IN_FUTURE = "OCCURRED_AT_IN_FUTURE"
BATCH_TOO_LARGE = "BATCH_TOO_LARGE"


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """The accepted range of `occurredAt` for one request, computed once from its `now`."""

    now: dt.datetime
    earliest: dt.datetime
    latest: dt.datetime
    late_window: int
    future_skew: int

    @classmethod
    def at(cls, now: dt.datetime, *, late_window: int, future_skew: int) -> Window:
        return cls(
            now,
            now - dt.timedelta(seconds=late_window),
            now + dt.timedelta(seconds=future_skew),
            late_window,
            future_skew,
        )


class CheckedEvent(NamedTuple):
    """A valid event, ready to insert (a tuple: bulk ingestion builds thousands per request)."""

    key: str
    metric: MetricRecord
    units: str  # exact decimal text; PostgreSQL casts it to numeric
    occurred_at: dt.datetime
    properties: str | None  # JSON text
    unique_value: str | None  # canonical JSON of the UNIQUE metric's property value
    explicit_time: bool  # occurredAt was given (idempotency compares it only then)
    micros: str | None = None  # occurred_at in microseconds since the epoch, when already known


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def micros(t: dt.datetime) -> str:
    """A time as decimal microseconds since the epoch (exact: no floats)."""
    d = t - _EPOCH
    return str((d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds)


def metric_key(value: Any, field: str = "key") -> str:
    if not isinstance(value, str) or not METRIC_KEY.match(value):
        raise BadInput(
            "a metric key is 1 to 64 lower-case letters, digits or underscores, starting with a letter"
            " (e.g. api_calls, tokens_processed)",
            field=field,
        )
    return value


def unit_price(value: Any, field: str = "unitPrice", name: str = "unitPrice") -> decimal.Decimal:
    """A price (`name` in messages: a tier's flatPrice is checked alike): >= 0, below PRICE_MAX, at
    most PRICE_MAX_PLACES places."""
    d = _decimal(value, field, name)
    if d < 0:
        raise BadInput(f"{name} must be zero or more", field=field)
    if d >= PRICE_MAX:
        raise BadInput(f"{name} must be less than {PRICE_MAX:,}", field=field)
    if _places(d) > PRICE_MAX_PLACES:
        raise BadInput(f"{name} has at most {PRICE_MAX_PLACES} decimal places", field=field)
    return d


def units(value: Any, field: str = "units", name: str = "units") -> decimal.Decimal:
    return decimal.Decimal(units_text(value, field, name))


def units_text(value: Any, field: str = "units", name: str = "units") -> str:
    """Units as exact decimal text: a number >= 0, below 10^15, at most 9 decimal places."""
    if type(value) is int:  # the common case, kept cheap
        if 0 <= value < 1_000_000_000_000_000:
            return str(value)
        raise BadInput(f"{name} must be zero or more and below 10^15", field=field)
    d = _decimal(value, field, name)
    if d < 0 or d >= UNITS_MAX:
        raise BadInput(f"{name} must be zero or more and below 10^15", field=field)
    if _places(d) > UNITS_MAX_PLACES:
        raise BadInput(f"{name} has at most {UNITS_MAX_PLACES} decimal places", field=field)
    return format(d, "f")


def _decimal(value: Any, field: str, name: str) -> decimal.Decimal:
    if isinstance(value, bool) or value is None:
        raise BadInput(f"{name} must be a number", field=field)
    if isinstance(value, str) and DECIMAL_TEXT.fullmatch(value) is None:
        # As the GraphQL Decimal scalar: no spaces, exponents or non-ASCII digits in text.
        raise BadInput(
            f"{name} must be a plain decimal number in ASCII (-?[0-9]+ with an optional .[0-9]+)", field=field
        )
    try:
        if isinstance(value, float):
            value = repr(value)  # floats come from JSON; repr keeps 0.1 as 0.1
        d = value if isinstance(value, decimal.Decimal) else decimal.Decimal(str(value))
    except (decimal.InvalidOperation, ValueError, TypeError):
        raise BadInput(f"{name} must be a decimal number", field=field) from None
    if not d.is_finite():
        raise BadInput(f"{name} must be a finite number", field=field)
    return d if d < 0 else d.copy_abs()  # a given "-0" is a plain 0 (it would be stored as "-0")


def _places(d: decimal.Decimal) -> int:
    """Significant decimal places (trailing zeros do not count: 0.50 has one)."""
    exponent = d.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def idempotency_key(value: Any, field: str = "idempotencyKey") -> str:
    if type(value) is not str or not 0 < len(value) <= KEY_MAX or not value.isprintable():
        raise BadInput(f"idempotencyKey must be 1 to {KEY_MAX} printable characters", field=field)
    return value


def occurred_at(value: Any, window: Window, field: str = "occurredAt") -> dt.datetime:
    if type(value) is str:
        try:
            t = dt.datetime.fromisoformat(value)
        except ValueError:
            raise BadInput("occurredAt must be an ISO 8601 date-time with a UTC offset", field=field) from None
    elif isinstance(value, dt.datetime):
        t = value
    else:
        raise BadInput("occurredAt must be an ISO 8601 date-time with a UTC offset", field=field)
    if t.tzinfo is None or t.utcoffset() is None:
        raise BadInput("occurredAt needs a UTC offset (e.g. 2026-01-01T12:00:00Z)", field=field)
    if t < window.earliest:
        raise BadInput(
            f"occurredAt is older than the late window ({_span(window.late_window)}); such events are refused",
            field=field,
            reason=TOO_OLD,
        )
    if t > window.latest:
        raise BadInput(
            f"occurredAt is more than {_span(window.future_skew)} in the future",
            field=field,
            reason=IN_FUTURE,
        )
    return t


def _span(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hours"
    if seconds % 60 == 0:
        return f"{seconds // 60} minutes"
    return f"{seconds} seconds"


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)  # properties are descriptive: a JSON number either way
    raise TypeError(type(value).__name__)


def properties_json(value: Any, field: str = "properties") -> str | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise BadInput("properties must be a JSON object", field=field)
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default)
        size = len(text.encode())
    except (TypeError, ValueError):  # unserializable, NaN, or a lone surrogate (UnicodeEncodeError)
        raise BadInput("properties must be plain JSON (UTF-8, finite numbers)", field=field) from None
    if size > PROPERTIES_MAX_BYTES or "\\u0000" in text:
        raise BadInput(f"properties must be at most {PROPERTIES_MAX_BYTES} bytes of JSON without NUL", field=field)
    return text


def unique_value(metric: MetricRecord, props: Any, field: str = "properties") -> str:
    name = metric.unique_property
    assert name is not None
    value = props.get(name) if type(props) is dict else None
    if value is None or isinstance(value, dict | list):
        raise BadInput(
            f"metric {metric.key} counts distinct values of the property {name!r}: give it as a string, number"
            " or boolean in properties",
            field=field,
        )
    text = json.dumps(value, ensure_ascii=False, default=_json_default)
    if len(text) > UNIQUE_VALUE_MAX:
        raise BadInput(f"properties.{name} must be at most {UNIQUE_VALUE_MAX} characters", field=field)
    return text


def check_event(ev: Any, metrics: Mapping[str, MetricRecord], window: Window) -> CheckedEvent:
    """Validate one event of the wire format; raises BAD_USER_INPUT or NOT_FOUND (metricKey)."""
    if type(ev) is not dict:
        raise BadInput("each event must be a JSON object", field="events")
    if len(ev) > 5 or not ev.keys() <= EVENT_FIELDS:
        extra = sorted(k for k in ev if k not in EVENT_FIELDS)
        if extra:
            hint = " (charging happens per event: use recordUsage or chargeUsage)" if "walletId" in extra else ""
            raise BadInput(f"unknown event field {extra[0]!r}{hint}", field=str(extra[0]))
    key = idempotency_key(ev.get("idempotencyKey"))
    mk = ev.get("metricKey")
    metric = metrics.get(mk) if type(mk) is str else None
    if metric is None:
        if type(mk) is not str or not mk:
            raise BadInput("metricKey is required", field="metricKey")
        raise NotFound(f"no metric {mk!r} in this project (defineMetric first)", field="metricKey")
    u = units_text(ev.get("units"))
    when = ev.get("occurredAt")
    t = window.now if when is None else occurred_at(when, window)
    raw_props = ev.get("properties")
    props = properties_json(raw_props) if raw_props is not None else None
    uvalue = unique_value(metric, raw_props) if metric.aggregation is Aggregation.UNIQUE else None
    return CheckedEvent(key, metric, u, t, props, uvalue, when is not None)


@dataclasses.dataclass(slots=True)
class Checked:
    """The outcome of validating a batch: the good events by key (first one wins; CheckedEvent or
    a plain tuple in its field order), the rejected ones, the in-batch duplicates, the range of
    event times (for partitions), and the batch's shape: whether every good event has the same
    metric (`one_metric`), and whether any has properties or a UNIQUE value (`extras`)."""

    good: dict[str, CheckedEvent]
    rejected: list[Rejection]
    duplicates: int
    earliest: dt.datetime | None
    latest: dt.datetime | None
    one_metric: bool = True
    extras: bool = False


_fromiso = dt.datetime.fromisoformat
_UNIQUE = Aggregation.UNIQUE
_MISSING = object()


def _acceptable(when: str, earliest: dt.datetime, latest: dt.datetime) -> tuple[dt.datetime, str] | None:
    """The parsed time (and its microseconds) when it has an offset and lies in the window, else
    None (the event then takes the slow path, which says what is wrong)."""
    try:
        t = _fromiso(when)
    except ValueError:
        return None
    if t.tzinfo is None or not earliest <= t <= latest:
        return None
    return t, micros(t)


def check_batch(events: list[Any], metrics: Mapping[str, MetricRecord], window: Window) -> Checked:
    """Validate a batch. The common event (a known metric that is not UNIQUE, integer units, a
    plain key, an ISO time or none, no properties, no unknown field) is checked inline and kept as
    a plain tuple in CheckedEvent's field order; anything else goes through `check_event`, which
    gives the precise rejection."""
    good: dict[str, CheckedEvent] = {}
    rejected: list[Rejection] = []
    duplicates = 0
    now, earliest, latest = window.now, window.earliest, window.latest
    now_micros = micros(now)
    lo: dt.datetime | None = None
    hi: dt.datetime | None = None
    first_metric: MetricRecord | None = None
    one_metric = True
    extras = False
    times: dict[str, Any] = {}  # occurredAt text -> (datetime, micros), or None when not acceptable
    for i, ev in enumerate(events):
        c: Any = None
        if type(ev) is dict:
            key = ev.get("idempotencyKey")
            mk = ev.get("metricKey")
            metric = metrics.get(mk) if type(mk) is str else None
            units = ev.get("units")
            when = ev.get("occurredAt")
            if (
                type(key) is str
                and 0 < len(key) <= KEY_MAX
                and key.isprintable()
                and metric is not None
                and metric.aggregation is not _UNIQUE
                and type(units) is int
                and 0 <= units < 1_000_000_000_000_000
                # exactly the three required fields, and occurredAt when given: nothing else
                and len(ev) == (3 if when is None else 4)
            ):
                if when is None:
                    c = (key, metric, str(units), now, None, None, False, now_micros)
                elif type(when) is str:
                    # Events of a batch often share timestamps: parse each distinct string once.
                    tm = times.get(when, _MISSING)
                    if tm is _MISSING:
                        tm = times[when] = _acceptable(when, earliest, latest)
                    if tm is not None:
                        c = (key, metric, str(units), tm[0], None, None, True, tm[1])
        if c is None:
            try:
                c = check_event(ev, metrics, window)
            except AppError as e:
                rejected.append(Rejection(i, e.code, e.message, e.field, e.extra.get("reason")))
                continue
            if c.properties is not None or c.unique_value is not None:
                extras = True
        key = c[0]
        if key in good:
            duplicates += 1
            continue
        good[key] = c
        m = c[1]
        if m is not first_metric:
            if first_metric is None:
                first_metric = m
            else:
                one_metric = False
        t = c[3]
        if lo is None or t < lo:
            lo = t
        if hi is None or t > hi:
            hi = t
    return Checked(good, rejected, duplicates, lo, hi, one_metric, extras)
