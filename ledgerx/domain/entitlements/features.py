"""Features a plan grants, and a project's effective set (no database here).

A plan carries `entitlements`: [{featureKey, type, enabled, limit, metricKey, period, config}]
- BOOLEAN: on or off (`enabled`);
- METERED: at most `limit` of a metric's total (`metricKey`: units for SUM metrics, events for
  COUNT metrics) per UTC `period` (MONTH or DAY); ingestion refuses (or flags) the events past it.
  A limit on a MAX or UNIQUE metric is answered by the checks only: such a total is not a sum an
  event can be refused against, and its reaching is not announced (no meter sees it), so a check
  may still grant for up to the checks' TTL (checks.TTL_SECONDS) after the total passed the limit;
- CONFIG: a JSON value the app reads (`config`), e.g. {"seats": 5} or {"region": "eu"}.

A plan's `monthlyQuotas` {metric: limit} are METERED features of the same mechanism: each is the
feature named by its metric key, MONTH (an entitlement of the same key, explicit, wins). So one
resolution (`effective`) gives both the entitlement checks and the usage meters that refuse or flag
events (usage/quotas.py: `meters`), and they can never disagree.

A project's effective features: its effective plan's (payments/subscriptions.py: overrides of the
plan, subscriptions, trials, grace and pending downgrades decide which plan that is), its plan
override's monthly quotas, then its per-feature overrides that have not expired (their non-null
fields replace the plan's; a feature no plan of the project has is granted by its override alone).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ledgerx.domain.errors import BadInput
from ledgerx.domain.usage.quotas import PERIODS, Meter

TYPES = ("BOOLEAN", "METERED", "CONFIG")
FEATURE_KEY = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
_METRIC_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_PER_PLAN = 100
MAX_CONFIG_BYTES = 8192
MAX_LIMIT = 2**63 - 1


@dataclasses.dataclass(frozen=True, slots=True)
class Feature:
    feature_key: str
    type: str  # BOOLEAN | METERED | CONFIG
    enabled: bool = True
    limit: int | None = None  # METERED
    metric_key: str | None = None  # METERED
    period: str | None = None  # METERED: MONTH | DAY
    config: Any = None  # CONFIG

    def to_json(self) -> dict[str, Any]:
        return {
            "featureKey": self.feature_key,
            "type": self.type,
            "enabled": self.enabled,
            "limit": self.limit,
            "metricKey": self.metric_key,
            "period": self.period,
            "config": self.config,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Feature:
        return cls(
            feature_key=raw["featureKey"],
            type=raw["type"],
            enabled=bool(raw.get("enabled", True)),
            limit=raw.get("limit"),
            metric_key=raw.get("metricKey"),
            period=raw.get("period"),
            config=raw.get("config"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Override:
    """A project's override of one feature (entitlement_overrides): None fields keep the plan's.
    `shape` is the feature as it was known when overridden (its type, metric and period), which a
    plan without the feature takes."""

    shape: Feature
    enabled: bool | None
    limit: int | None
    config: Any
    expires_at: dt.datetime | None

    @property
    def feature_key(self) -> str:
        return self.shape.feature_key


def feature_key(value: Any, field: str = "featureKey") -> str:
    if not isinstance(value, str) or not FEATURE_KEY.match(value):
        raise BadInput(
            "featureKey is 1-64 characters: a lower-case letter, then letters, digits, '_', '.', ':' or '-'",
            field=field,
        )
    return value


def limit(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise BadInput("limit must be a whole number from 0", field=field)
    return value


def config(value: Any, field: str) -> Any:
    try:
        size = len(json.dumps(value, separators=(",", ":")))
    except (TypeError, ValueError):
        raise BadInput("config must be a JSON value", field=field) from None
    if size > MAX_CONFIG_BYTES:
        raise BadInput(f"config is at most {MAX_CONFIG_BYTES} bytes of JSON", field=field)
    return value


def parse(items: Sequence[Mapping[str, Any]], field: str = "entitlements") -> list[dict[str, Any]]:
    """A plan's entitlements as stored (plans.entitlements), validated; BAD_USER_INPUT names the item."""
    if len(items) > MAX_PER_PLAN:
        raise BadInput(f"at most {MAX_PER_PLAN} entitlements per plan", field=field)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, raw in enumerate(items):
        at = f"{field}[{i}]"
        key = feature_key(raw.get("featureKey"), f"{at}.featureKey")
        if key in seen:
            raise BadInput(f"the feature {key!r} is listed twice", field=f"{at}.featureKey")
        seen.add(key)
        kind = raw.get("type")
        if kind not in TYPES:
            raise BadInput("type must be BOOLEAN, METERED or CONFIG", field=f"{at}.type")
        enabled = raw.get("enabled", True)
        if enabled is None:
            enabled = True
        if not isinstance(enabled, bool):
            raise BadInput("enabled must be true or false", field=f"{at}.enabled")
        given = {k for k in ("limit", "metricKey", "period", "config") if raw.get(k) is not None}
        allowed = {"BOOLEAN": set(), "METERED": {"limit", "metricKey", "period"}, "CONFIG": {"config"}}[kind]
        extra = sorted(given - allowed)
        if extra:
            raise BadInput(f"a {kind} entitlement takes no {extra[0]}", field=f"{at}.{extra[0]}")
        f = Feature(key, kind, enabled)
        if kind == "METERED":
            metric = raw.get("metricKey")
            if not isinstance(metric, str) or not _METRIC_KEY.match(metric):
                raise BadInput("a METERED entitlement needs the metricKey it counts", field=f"{at}.metricKey")
            if raw.get("limit") is None:
                raise BadInput("a METERED entitlement needs a limit", field=f"{at}.limit")
            period = raw.get("period") or "MONTH"
            if period not in PERIODS:
                raise BadInput("period must be MONTH or DAY", field=f"{at}.period")
            f = dataclasses.replace(f, limit=limit(raw.get("limit"), f"{at}.limit"), metric_key=metric, period=period)
        elif kind == "CONFIG":
            if "config" not in given:
                raise BadInput("a CONFIG entitlement needs its config value", field=f"{at}.config")
            f = dataclasses.replace(f, config=config(raw.get("config"), f"{at}.config"))
        out.append(f.to_json())
    return out


def of_plan(
    entitlements: Iterable[Mapping[str, Any]] | None, monthly_quotas: Mapping[str, Any] | None
) -> dict[str, Feature]:
    """A plan's features: its monthly quotas as METERED features, then its entitlements."""
    out = {
        metric: Feature(metric, "METERED", True, int(n), metric, "MONTH")
        for metric, n in (monthly_quotas or {}).items()
    }
    for raw in entitlements or ():
        f = Feature.from_json(raw)
        out[f.feature_key] = f
    return out


def effective(
    plan_features: Mapping[str, Feature],
    quota_overrides: Mapping[str, Any] | None,
    overrides: Iterable[Override],
    now: dt.datetime,
) -> dict[str, Feature]:
    """The project's features now: the plan's, its plan override's monthly quotas, then its live
    per-feature overrides (a feature the plan lacks is granted by its override alone, in the
    shape it was given)."""
    out = dict(plan_features)
    for metric, n in (quota_overrides or {}).items():
        base = out.get(metric)
        if base is not None and base.type == "METERED" and base.metric_key == metric and base.period == "MONTH":
            out[metric] = dataclasses.replace(base, limit=int(n))
        elif base is None:
            out[metric] = Feature(metric, "METERED", True, int(n), metric, "MONTH")
    for o in overrides:
        if o.expires_at is not None and now >= o.expires_at:
            continue
        base = out.get(o.feature_key) or o.shape
        out[o.feature_key] = dataclasses.replace(
            base,
            enabled=o.enabled if o.enabled is not None else base.enabled,
            limit=o.limit if o.limit is not None and base.type == "METERED" else base.limit,
            config=o.config if o.config is not None and base.type == "CONFIG" else base.config,
        )
    return out


def meters(features: Mapping[str, Feature]) -> dict[str, list[Meter]]:
    """The usage meters of a feature set, by metric key: each METERED feature's limit over its
    period (a disabled one allows nothing). usage/quotas.py enforces them."""
    out: dict[str, list[Meter]] = {}
    for f in features.values():
        if f.type == "METERED" and f.metric_key is not None and f.limit is not None and f.period is not None:
            out.setdefault(f.metric_key, []).append(Meter(f.period, f.limit if f.enabled else 0))
    for ms in out.values():
        ms.sort(key=lambda m: (m.period, m.limit))
    return out


def override_of(row: Any) -> Override:
    """An entitlement_overrides row (ORM or asyncpg) as the resolution takes it."""
    shape = Feature(row.feature_key, row.type, True, None, row.metric_key, row.period)
    return Override(shape, row.enabled, row.limit, row.config, row.expires_at)
