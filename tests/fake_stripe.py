"""A small local fake of the Stripe API (the endpoints LedgerX calls), served by uvicorn in the test
loop, plus the Stripe side of the story: completing checkouts, renewing, failing and refunding
payments, opening disputes, each returning the events Stripe would send, signed like Stripe.

The real `stripe` SDK talks to it (STRIPE_API_BASE points here), so request encoding, idempotency
keys, error mapping and pagination go through the SDK's own code.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import decimal
import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledgerx.domain.payments import inbox
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import free_port

API_KEY = "sk_test_ledgerx_fake"
SECRETS = ("whsec_current_secret", "whsec_previous_secret")
API_VERSION = "2025-01-27.acacia"

Obj = dict[str, Any]


# -- Stripe's form encoding --------------------------------------------------------------------------


def _set(target: dict[str, Any], path: list[str], value: str) -> None:
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if last:
            target[part] = value
        else:
            target = target.setdefault(part, {})


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        value = {k: _listify(v) for k, v in value.items()}
        if value and all(k.isdigit() for k in value):
            return [value[k] for k in sorted(value, key=int)]
    return value


def decode_form(raw: str) -> dict[str, Any]:
    """`a[b][0][c]=v` (Stripe's bracket encoding) -> nested dicts and lists of strings."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        head, _, rest = key.partition("[")
        path = [head] + ([p.rstrip("]") for p in rest.split("[")] if rest else [])
        _set(out, path, value)
    result: dict[str, Any] = _listify(out)
    return result


def _bool(v: Any) -> bool:
    return str(v).lower() == "true"


# -- time ------------------------------------------------------------------------------------------------


def add_months(t: int, months: int) -> int:
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    m = d.month - 1 + months
    year, month = d.year + m // 12, m % 12 + 1
    for day in range(d.day, 27, -1):
        try:
            return int(d.replace(year=year, month=month, day=day).timestamp())
        except ValueError:
            continue
    return int(d.replace(year=year, month=month, day=min(d.day, 28)).timestamp())


def period_end(start: int, interval: str) -> int:
    return add_months(start, 12 if interval == "year" else 1)


# -- signing ---------------------------------------------------------------------------------------------


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header: t=<ts>,v1=<hex hmac-sha256 of "<ts>.<payload>">."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


async def deliver(
    client: httpx.AsyncClient, event: Obj, *, secret: str = SECRETS[0], timestamp: int | None = None
) -> httpx.Response:
    payload = json.dumps(event, separators=(",", ":"))
    return await client.post(
        "/webhooks/stripe",
        content=payload,
        headers={"Stripe-Signature": sign(payload, secret, timestamp), "Content-Type": "application/json"},
    )


async def deliver_and_process(client: httpx.AsyncClient, services: Services, *events: Obj) -> None:
    """Each event through the signed route (each must be accepted), then the inbox processed."""
    for ev in events:
        r = await deliver(client, ev)
        assert r.status_code == 200, r.text
    await inbox.drain(services.payments)


# -- the fake ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    request_id: str = ""


@dataclasses.dataclass
class Failure:
    """An error Stripe answers instead of doing the call (see `FakeStripe.fail_next`)."""

    method: str
    prefix: str
    status: int
    body: Obj
    times: int
    retry: bool


class FakeStripe:
    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.events: list[Obj] = []
        self.calls: list[Call] = []
        self.pending_items: dict[str, list[Obj]] = {}
        self._idem: dict[str, tuple[int, Obj]] = {}
        self._counter = itertools.count(1)
        self.now: int | None = None  # pinned Stripe time (unix seconds); None: the wall clock
        self.decline_payments = False
        self.failures: list[Failure] = []
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/{path:path}", self._dispatch, methods=["GET", "POST", "DELETE"]),
            ]
        )

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        port = free_port()
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
        )
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(250):
            if self._server.started:
                break
            await asyncio.sleep(0.02)
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    # -- helpers ----------------------------------------------------------------------------------------

    def time(self) -> int:
        return self.now if self.now is not None else int(time.time())

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(6)}{next(self._counter):04d}"

    def get(self, object_id: str) -> Obj:
        return self.objects[object_id]

    def of_type(self, kind: str) -> list[Obj]:
        return [o for o in self.objects.values() if o.get("object") == kind]

    def calls_to(self, method: str, prefix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.startswith(prefix)]

    def event(self, event_type: str, obj: Obj, *, created: int | None = None, record: bool = True) -> Obj:
        """An event as Stripe sends it: a snapshot of the object at that moment."""
        ev = {
            "id": self.new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.time() if created is None else created,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
            "data": {"object": copy.deepcopy(obj)},
        }
        if record:
            self.events.append(ev)
        return ev

    # -- HTTP --------------------------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path: str,
        *,
        status: int = 500,
        kind: str = "api_error",
        message: str = "An unknown error occurred",
        code: str | None = None,
        times: int = 1,
        retry: bool = False,
    ) -> None:
        """Answer the next `times` calls of `method` to a path starting with `path` (after `/v1/`,
        e.g. "prices" or "checkout/sessions") with this Stripe error, doing nothing. Like Stripe, the
        error carries a `Request-Id`, is not kept for the idempotency key (a retry does the call),
        and says `Stripe-Should-Retry: false` unless `retry` (so the SDK does not retry it itself)."""
        body: Obj = {"error": {"type": kind, "message": message, "code": code}}
        self.failures.append(Failure(method.upper(), path.strip("/"), status, body, times, retry))

    def _forced(self, method: str, path: str) -> Failure | None:
        for f in self.failures:
            if f.method == method and path.strip("/").startswith(f.prefix):
                f.times -= 1
                if f.times <= 0:
                    self.failures.remove(f)
                return f
        return None

    async def _dispatch(self, request: Request) -> Response:
        request_id = f"req_{secrets.token_hex(7)}"
        headers = {"Request-Id": request_id}
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return self._error(401, "invalid_request_error", "Invalid API Key provided", headers=headers)
        path = request.path_params["path"]
        raw = (await request.body()).decode() if request.method == "POST" else request.url.query
        params = decode_form(raw)
        key = request.headers.get("idempotency-key")
        self.calls.append(Call(request.method, path, params, key, request_id))
        forced = self._forced(request.method, path)
        if forced is not None and forced.body["error"]["type"] == "card_error" and path.strip("/") == "payment_intents":
            # A decline of an off-session PaymentIntent: Stripe makes the intent, fails it, sends
            # payment_intent.payment_failed and answers 402 with the intent (kept for the key).
            body = self._declined_intent(params, forced.body)
            if key is not None:
                self._idem[key] = (forced.status, body)
            return JSONResponse(body, status_code=forced.status, headers=headers)
        if forced is not None:
            headers["Stripe-Should-Retry"] = "true" if forced.retry else "false"
            return JSONResponse(forced.body, status_code=forced.status, headers=headers)
        if key is not None and request.method == "POST":
            cached = self._idem.get(key)
            if cached is not None:
                return JSONResponse(
                    cached[1], status_code=cached[0], headers={**headers, "Idempotent-Replayed": "true"}
                )
        status, body = self._route(request.method, path.strip("/").split("/"), params)
        if key is not None and request.method == "POST" and status < 500:
            self._idem[key] = (status, body)
        return JSONResponse(body, status_code=status, headers=headers)

    @staticmethod
    def _error(
        status: int, kind: str, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        return JSONResponse(
            {"error": {"type": kind, "message": message, "code": code}}, status_code=status, headers=headers
        )

    def _route(self, method: str, parts: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        head = parts[0]
        try:
            if head == "checkout" and parts[1] == "sessions":
                if method == "POST" and len(parts) == 2:
                    return self._create_session(p)
                if method == "GET" and len(parts) == 2:
                    return 200, self._list("checkout.session", "/v1/checkout/sessions", p)
                if method == "POST" and len(parts) == 4 and parts[3] == "expire":
                    return self._expire_session(parts[2])
                return 200, self.objects[parts[2]]
            if head == "events":
                if len(parts) == 1:
                    return 200, self._list_events(p)
                return 200, next(e for e in self.events if e["id"] == parts[1])
            handler = getattr(self, f"_{method.lower()}_{head}", None)
            if handler is None:
                return 404, {"error": {"type": "invalid_request_error", "message": f"no route {method} {parts}"}}
            result: tuple[int, Obj] = handler(parts[1:], p)
            return result
        except (KeyError, StopIteration):
            return 404, {
                "error": {"type": "invalid_request_error", "message": "No such object", "code": "resource_missing"}
            }

    def _list(self, kind: str, url: str, p: dict[str, Any]) -> Obj:
        items = [o for o in self.objects.values() if o.get("object") == kind]
        gte = int(p.get("created", {}).get("gte", 0)) if isinstance(p.get("created"), dict) else 0
        items = [o for o in items if o.get("created", 0) >= gte]
        if "status" in p:
            items = [o for o in items if o.get("status") == p["status"]]
        items.sort(key=lambda o: (o.get("created", 0), o["id"]), reverse=True)
        return self._page(items, url, p)

    def _page(self, items: list[Obj], url: str, p: dict[str, Any]) -> Obj:
        after = p.get("starting_after")
        if after:
            idx = next(i for i, o in enumerate(items) if o["id"] == after)
            items = items[idx + 1 :]
        limit = int(p.get("limit", 10))
        return {"object": "list", "url": url, "data": items[:limit], "has_more": len(items) > limit}

    def _list_events(self, p: dict[str, Any]) -> Obj:
        gte = int(p.get("created", {}).get("gte", 0)) if isinstance(p.get("created"), dict) else 0
        items = sorted((e for e in self.events if e["created"] >= gte), key=lambda e: e["created"], reverse=True)
        return self._page(items, "/v1/events", p)

    def _store(self, obj: Obj) -> Obj:
        self.objects[obj["id"]] = obj
        return obj

    # products and prices

    def _post_products(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        if rest:
            prod = self.objects[rest[0]]
            if "name" in p:
                prod["name"] = p["name"]
            if "active" in p:
                prod["active"] = _bool(p["active"])
            prod.setdefault("metadata", {}).update(p.get("metadata", {}))
            return 200, prod
        return 200, self._store(
            {
                "id": self.new_id("prod"),
                "object": "product",
                "name": p["name"],
                "active": True,
                "metadata": p.get("metadata", {}),
                "created": self.time(),
            }
        )

    def _delete_products(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        prod = self.objects[rest[0]]
        if any(o.get("object") == "price" and o["product"] == prod["id"] for o in self.objects.values()):
            return 400, {
                "error": {
                    "type": "invalid_request_error",
                    "message": "This product cannot be deleted because it has one or more user-created prices.",
                }
            }
        del self.objects[prod["id"]]
        return 200, {"id": prod["id"], "object": "product", "deleted": True}

    def _post_prices(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        if rest:
            price = self.objects[rest[0]]
            if "active" in p:
                price["active"] = _bool(p["active"])
            return 200, price
        recurring = p.get("recurring")
        return 200, self._store(
            {
                "id": self.new_id("price"),
                "object": "price",
                "product": p["product"],
                "unit_amount": int(p["unit_amount"]),
                "currency": p["currency"],
                "recurring": {"interval": recurring["interval"], "interval_count": 1} if recurring else None,
                "type": "recurring" if recurring else "one_time",
                "active": True,
                "metadata": p.get("metadata", {}),
                "created": self.time(),
            }
        )

    def _post_customers(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        return 200, self._store(
            {
                "id": self.new_id("cus"),
                "object": "customer",
                "name": p.get("name"),
                "metadata": p.get("metadata", {}),
                "created": self.time(),
            }
        )

    # the customer portal

    def _post_billing_portal(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        """POST /v1/billing_portal/sessions: like Stripe, the customer must exist (404 otherwise)."""
        if rest != ["sessions"]:
            return 404, {"error": {"type": "invalid_request_error", "message": f"no route POST billing_portal {rest}"}}
        customer = self.objects[p["customer"]]
        sid = self.new_id("bps")
        return 200, self._store(
            {
                "id": sid,
                "object": "billing_portal.session",
                "customer": customer["id"],
                "return_url": p.get("return_url"),
                "url": f"https://billing.stripe.test/p/session/{sid}",
                "configuration": "bpc_default",
                "livemode": False,
                "created": self.time(),
            }
        )

    # coupons and promotion codes

    @staticmethod
    def _invalid(message: str, param: str | None = None, code: str | None = None) -> tuple[int, Obj]:
        return 400, {"error": {"type": "invalid_request_error", "message": message, "param": param, "code": code}}

    def _get_coupons(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        return 200, self.objects[rest[0]]

    def _post_coupons(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        if rest:
            coupon = self.objects[rest[0]]
            if "name" in p:
                coupon["name"] = p["name"]
            coupon["metadata"].update(p.get("metadata", {}))
            return 200, coupon
        cid = p.get("id") or self.new_id("co")
        if cid in self.objects:
            return self._invalid("Coupon already exists.", "id", "resource_already_exists")
        if ("percent_off" in p) == ("amount_off" in p):
            return self._invalid("Exactly one of percent_off or amount_off is required.", "percent_off")
        if "amount_off" in p and not p.get("currency"):
            return self._invalid("currency is required with amount_off.", "currency")
        if "percent_off" in p and not 0 < float(p["percent_off"]) <= 100:
            return self._invalid("percent_off must be above 0 and at most 100.", "percent_off")
        duration = p.get("duration", "once")
        if (duration == "repeating") != ("duration_in_months" in p):
            return self._invalid("duration_in_months goes with a repeating duration.", "duration_in_months")
        if len(p.get("name") or "") > 40:
            return self._invalid("Name must be at most 40 characters.", "name")
        products = (p.get("applies_to") or {}).get("products") or []
        for prod in products:
            if self.objects.get(prod, {}).get("object") != "product":
                return self._invalid(f"No such product: '{prod}'", "applies_to[products]", "resource_missing")
        return 200, self._store(
            {
                "id": cid,
                "object": "coupon",
                "name": p.get("name"),
                "percent_off": float(p["percent_off"]) if "percent_off" in p else None,
                "amount_off": int(p["amount_off"]) if "amount_off" in p else None,
                "currency": p.get("currency"),
                "duration": duration,
                "duration_in_months": int(p["duration_in_months"]) if "duration_in_months" in p else None,
                "applies_to": {"products": products} if products else None,
                "max_redemptions": int(p["max_redemptions"]) if "max_redemptions" in p else None,
                "redeem_by": int(p["redeem_by"]) if "redeem_by" in p else None,
                "times_redeemed": 0,
                "valid": True,
                "metadata": p.get("metadata", {}),
                "created": self.time(),
                "livemode": False,
            }
        )

    def _delete_coupons(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        coupon = self.objects.pop(rest[0])
        return 200, {"id": coupon["id"], "object": "coupon", "deleted": True}

    def _get_promotion_codes(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        return 200, self.objects[rest[0]]

    def _post_promotion_codes(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        if rest:
            promo = self.objects[rest[0]]
            if "active" in p:
                promo["active"] = _bool(p["active"])
            promo["metadata"].update(p.get("metadata", {}))
            return 200, promo
        promotion = p.get("promotion") or {}
        if promotion.get("type") != "coupon" or "coupon" not in promotion:
            return self._invalid("promotion[type]=coupon and promotion[coupon] are required.", "promotion")
        coupon = self.objects.get(promotion["coupon"])
        if coupon is None or coupon.get("object") != "coupon":
            return self._invalid(f"No such coupon: '{promotion['coupon']}'", "promotion[coupon]", "resource_missing")
        code = p.get("code") or secrets.token_hex(4).upper()
        if not re.fullmatch(r"[A-Za-z0-9-]+", code):
            return self._invalid("Invalid characters in code.", "code")
        if any(
            o.get("object") == "promotion_code" and o["active"] and o["code"].lower() == code.lower()
            for o in self.objects.values()
        ):
            return self._invalid("An active promotion code with `code` already exists.", "code")
        return 200, self._store(
            {
                "id": self.new_id("promo"),
                "object": "promotion_code",
                "code": code,
                "active": True,
                "promotion": {"type": "coupon", "coupon": coupon["id"]},
                "customer": None,
                "max_redemptions": int(p["max_redemptions"]) if "max_redemptions" in p else None,
                "expires_at": int(p["expires_at"]) if "expires_at" in p else None,
                "times_redeemed": 0,
                "metadata": p.get("metadata", {}),
                "created": self.time(),
                "livemode": False,
            }
        )

    def _promotion(self, promo_id: str) -> Obj | tuple[int, Obj]:
        """A promotion code that can be redeemed now, or Stripe's error."""
        promo = self.objects.get(promo_id)
        if promo is None or promo.get("object") != "promotion_code":
            return self._invalid(f"No such promotion code: '{promo_id}'", "discounts", "resource_missing")
        if not promo["active"] or promo["promotion"]["coupon"] not in self.objects:
            return self._invalid("This promotion code is inactive.", "discounts", "promotion_code_inactive")
        if promo["expires_at"] is not None and promo["expires_at"] <= self.time():
            return self._invalid("This promotion code has expired.", "discounts", "promotion_code_expired")
        if promo["max_redemptions"] is not None and promo["times_redeemed"] >= promo["max_redemptions"]:
            return self._invalid("This promotion code has been used up.", "discounts", "promotion_code_exhausted")
        return promo

    @staticmethod
    def _discount_of(coupon: Obj, amount: int, product: str | None) -> int:
        products = (coupon.get("applies_to") or {}).get("products") or []
        if products and product not in products:
            return 0
        if coupon["percent_off"] is not None:
            return min(amount, round(amount * coupon["percent_off"] / 100))
        return min(amount, int(coupon["amount_off"]))

    def _new_discount(self, promo: Obj, *, subscription: str | None, customer: str | None) -> Obj:
        promo["times_redeemed"] += 1
        coupon = self.objects[promo["promotion"]["coupon"]]
        coupon["times_redeemed"] += 1
        return self._store(
            {
                "id": self.new_id("di"),
                "object": "discount",
                "coupon": copy.deepcopy(coupon),
                "promotion_code": promo["id"],
                "subscription": subscription,
                "customer": customer,
                "start": self.time(),
                "end": None,
            }
        )

    def _subscription_discounts(self, sub: Obj, value: Any) -> tuple[int, Obj] | None:
        """`discounts` on a subscription update: "" clears them, a list replaces them."""
        if value == "":
            sub["discounts"] = []
            return None
        out: list[str] = []
        for d in value:
            if "discount" in d:
                if d["discount"] not in (sub.get("discounts") or []):
                    return self._invalid(f"No such discount: '{d['discount']}'", "discounts", "resource_missing")
                out.append(d["discount"])
                continue
            found = self._promotion(d["promotion_code"])
            if isinstance(found, tuple):
                return found
            out.append(self._new_discount(found, subscription=sub["id"], customer=sub["customer"])["id"])
        sub["discounts"] = out
        return None

    def _expire_session(self, session_id: str) -> tuple[int, Obj]:
        sess = self.objects[session_id]
        if sess["status"] != "open":
            return self._invalid("Only open checkout sessions can be expired.", None, "checkout_session_not_open")
        sess["status"] = "expired"
        self.event("checkout.session.expired", self._public(sess))
        return 200, self._public(sess)

    def expire_checkout(self, session_id: str) -> Obj:
        """The session's `expires_at` passed unpaid: Stripe's `checkout.session.expired` event."""
        sess = self.objects[session_id]
        sess["status"] = "expired"
        return self.event("checkout.session.expired", self._public(sess))

    # tax rates (TAX_MODE=rates) and Stripe Tax (TAX_MODE=stripe)

    AUTOMATIC_TAX = {"display_name": "Sales tax", "percentage": 10.0, "inclusive": False}

    def _post_tax_rates(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        if rest:
            rate = self.objects[rest[0]]
            if "active" in p:
                rate["active"] = _bool(p["active"])
            return 200, rate
        return 200, self._store(
            {
                "id": self.new_id("txr"),
                "object": "tax_rate",
                "display_name": p["display_name"],
                "percentage": float(p["percentage"]),
                "inclusive": _bool(p.get("inclusive")),
                "country": p.get("country"),
                "state": p.get("state"),
                "active": True,
                "metadata": p.get("metadata", {}),
            }
        )

    @staticmethod
    def _tax_on(net: int, rate: Obj) -> int:
        """A line's tax: Stripe computes it per line on the discounted amount, to the nearest minor
        unit (this fake rounds ties to even, as LedgerX documents; see invoicing/composing.py)."""
        pct = decimal.Decimal(str(rate["percentage"]))
        exact = decimal.Decimal(net) * pct / ((100 + pct) if rate["inclusive"] else 100)
        return int(exact.quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_EVEN))

    def _taxes(self, net: int, rate_ids: list[str], automatic: bool) -> tuple[int, int, list[Obj]]:
        """(tax, exclusive part, breakdown) of a line of `net` with these tax rates or Stripe Tax."""
        rates = [self.objects[r] for r in rate_ids] + ([self.AUTOMATIC_TAX] if automatic else [])
        tax = exclusive = 0
        breakdown = []
        for rate in rates:
            amount = self._tax_on(net, rate)
            tax += amount
            exclusive += 0 if rate["inclusive"] else amount
            breakdown.append({"amount": amount, "rate": copy.deepcopy(rate)})
        return tax, exclusive, breakdown

    # refunds

    def _post_refunds(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        if rest:
            return self._invalid("only creating a refund is faked")
        charge_id = p.get("charge")
        if charge_id is None and p.get("payment_intent"):
            charge_id = next(
                (c["id"] for c in self.of_type("charge") if c["payment_intent"] == p["payment_intent"]), None
            )
        if charge_id is None or charge_id not in self.objects:
            return self._invalid("No such charge or payment intent", "charge", "resource_missing")
        ch = self.objects[charge_id]
        left = ch["amount"] - ch["amount_refunded"]
        amount = int(p.get("amount", left))
        if amount > left:
            return self._invalid(
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})", "amount"
            )
        refund = self._refund(charge_id, amount, metadata=p.get("metadata", {}))
        return 200, refund

    # checkout

    def _create_session(self, p: dict[str, Any]) -> tuple[int, Obj]:
        items = p.get("line_items", [])
        price = self.objects[items[0]["price"]]
        quantity = int(items[0].get("quantity", 1))
        subtotal = price["unit_amount"] * quantity
        discounts: list[Obj] = []
        discount = 0
        for d in p.get("discounts") or []:
            found = self._promotion(d["promotion_code"])
            if isinstance(found, tuple):
                return found
            coupon = self.objects[found["promotion"]["coupon"]]
            discounts.append({"coupon": coupon["id"], "promotion_code": found["id"]})
            discount += self._discount_of(coupon, subtotal - discount, price["product"])
        automatic = _bool((p.get("automatic_tax") or {}).get("enabled"))
        tax, exclusive, breakdown = self._taxes(subtotal - discount, list(items[0].get("tax_rates") or []), automatic)
        expires_at = int(p.get("expires_at") or self.time() + 86400)
        if not self.time() + 1800 <= expires_at <= self.time() + 86400:
            return 400, {
                "error": {
                    "type": "invalid_request_error",
                    "message": "expires_at must be between 30 minutes and 24 hours from now",
                    "param": "expires_at",
                }
            }
        sid = self.new_id("cs_test")
        return 200, self._store(
            {
                "id": sid,
                "object": "checkout.session",
                "url": f"https://checkout.stripe.test/c/pay/{sid}",
                "mode": p["mode"],
                "status": "open",
                "payment_status": "unpaid",
                "customer": p.get("customer"),
                "client_reference_id": p.get("client_reference_id"),
                "metadata": p.get("metadata", {}),
                "success_url": p.get("success_url"),
                "cancel_url": p.get("cancel_url"),
                "amount_subtotal": subtotal,
                "amount_total": subtotal - discount + exclusive,
                "total_details": {
                    "amount_discount": discount,
                    "amount_shipping": 0,
                    "amount_tax": tax,
                    "breakdown": {"taxes": breakdown, "discounts": []},
                },
                "automatic_tax": {"enabled": automatic},
                "discounts": discounts,
                "expires_at": expires_at,
                "currency": price["currency"],
                "payment_intent": None,
                "subscription": None,
                "created": self.time(),
                "livemode": False,
                "_line_items": items,
                "_subscription_data": p.get("subscription_data", {}),
                "_payment_intent_data": p.get("payment_intent_data", {}),
            }
        )

    # subscriptions

    def _get_payment_intents(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        return 200, self.objects[rest[0]]

    def _get_subscriptions(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        return 200, self.objects[rest[0]]

    def _post_subscriptions(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        sub = self.objects[rest[0]]
        if sub["status"] == "canceled":
            return 400, {"error": {"type": "invalid_request_error", "message": "subscription is canceled"}}
        for item in p.get("items", []):
            target = next(i for i in sub["items"]["data"] if i["id"] == item["id"])
            if "price" in item:
                target["price"] = copy.deepcopy(self.objects[item["price"]])
            if "tax_rates" in item:  # "" clears them, as Stripe's form encoding of an empty list
                target["tax_rates"] = [] if item["tax_rates"] == "" else list(item["tax_rates"])
        if "discounts" in p:
            made = self._subscription_discounts(sub, p["discounts"])
            if made is not None:
                return made
        if "cancel_at_period_end" in p:
            sub["cancel_at_period_end"] = _bool(p["cancel_at_period_end"])
            sub["canceled_at"] = self.time() if sub["cancel_at_period_end"] else None
        sub["metadata"].update(p.get("metadata", {}))
        return 200, sub

    def _delete_subscriptions(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        sub = self.objects[rest[0]]
        sub.update(status="canceled", canceled_at=self.time(), ended_at=self.time())
        return 200, sub

    def _post_subscription_schedules(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        if not rest:
            sub = self.objects[p["from_subscription"]]
            if sub.get("schedule"):
                return 400, {"error": {"type": "invalid_request_error", "message": "already has a schedule"}}
            item = sub["items"]["data"][0]
            sched = self._store(
                {
                    "id": self.new_id("sub_sched"),
                    "object": "subscription_schedule",
                    "subscription": sub["id"],
                    "status": "active",
                    "end_behavior": "release",
                    "metadata": {},
                    "phases": [
                        {
                            "items": [{"price": item["price"]["id"], "quantity": 1}],
                            "start_date": sub["current_period_start"],
                            "end_date": sub["current_period_end"],
                        }
                    ],
                    "created": self.time(),
                }
            )
            sub["schedule"] = sched["id"]
            return 200, sched
        sched = self.objects[rest[0]]
        if rest[1:] == ["release"]:
            sched["status"] = "released"
            self.objects[sched["subscription"]]["schedule"] = None
            return 200, sched
        if "phases" in p:
            sched["phases"] = [
                {
                    **phase,
                    "start_date": int(phase["start_date"]) if "start_date" in phase else None,
                    "end_date": int(phase["end_date"]) if "end_date" in phase else None,
                }
                for phase in p["phases"]
            ]
        sched["end_behavior"] = p.get("end_behavior", sched["end_behavior"])
        sched["metadata"].update(p.get("metadata", {}))
        return 200, sched

    # invoices

    def _post_invoiceitems(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        item = {
            "id": self.new_id("ii"),
            "object": "invoiceitem",
            "customer": p["customer"],
            "amount": int(p["amount"]),
            "currency": p["currency"],
            "description": p.get("description"),
            "subscription": p.get("subscription"),
            "metadata": p.get("metadata", {}),
            "tax_rates": list(p.get("tax_rates") or []),
        }
        self.pending_items.setdefault(p["customer"], []).append(item)
        return 200, self._store(item)

    def _post_invoices(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        if not rest:
            items = self.pending_items.pop(p["customer"], [])
            lines = [
                {
                    "id": self.new_id("il"),
                    "object": "line_item",
                    "amount": i["amount"],
                    "currency": i["currency"],
                    "description": i["description"],
                    "quantity": 1,
                    "proration": False,
                    "period": {"start": self.time(), "end": self.time()},
                    "price": None,
                    "tax_rates": [copy.deepcopy(self.objects[r]) for r in i["tax_rates"]],
                }
                for i in items
            ]
            automatic = _bool((p.get("automatic_tax") or {}).get("enabled"))
            taxed = [self._taxes(line["amount"], [r["id"] for r in line["tax_rates"]], automatic) for line in lines]
            total = sum(line["amount"] for line in lines) + sum(t[1] for t in taxed)
            return 200, self._store(
                self._invoice(
                    p["customer"],
                    p.get("subscription"),
                    lines,
                    total,
                    items[0]["currency"] if items else "usd",
                    billing_reason="manual",
                    metadata=p.get("metadata", {}),
                    status="draft",
                    taxes=[b for t in taxed for b in t[2]],
                )
            )
        inv = self.objects[rest[0]]
        action = rest[1] if len(rest) > 1 else ""
        if action == "finalize":
            inv["status"] = "open"
        elif action == "pay":
            if self.decline_payments:
                inv["attempt_count"] += 1
                return 402, {
                    "error": {
                        "type": "card_error",
                        "code": "card_declined",
                        "decline_code": "generic_decline",
                        "message": "Your card was declined.",
                    }
                }
            self._mark_paid(inv)
        elif action == "void":
            inv["status"] = "void"
        return 200, inv

    def _invoice(
        self,
        customer: str,
        subscription: str | None,
        lines: list[Obj],
        total: int,
        currency: str,
        *,
        billing_reason: str,
        metadata: Obj | None = None,
        status: str = "open",
        taxes: list[Obj] | None = None,
    ) -> Obj:
        sub_meta = self.objects[subscription]["metadata"] if subscription in self.objects else {}
        return {
            "id": self.new_id("in"),
            "object": "invoice",
            "customer": customer,
            "subscription": subscription,
            "parent": {
                "type": "subscription_details",
                "subscription_details": {"subscription": subscription, "metadata": sub_meta},
            }
            if subscription
            else None,
            "status": status,
            "billing_reason": billing_reason,
            "currency": currency,
            "total": total,
            "amount_due": total,
            "amount_paid": 0,
            "attempt_count": 0,
            "next_payment_attempt": None,
            "charge": None,
            "payment_intent": None,
            "metadata": metadata or {},
            "status_transitions": {"paid_at": None},
            "lines": {"object": "list", "data": lines},
            "period_start": lines[0]["period"]["start"] if lines else self.time(),
            "period_end": lines[0]["period"]["end"] if lines else self.time(),
            "created": self.time(),
            "total_tax_amounts": [
                {"amount": t["amount"], "inclusive": t["rate"]["inclusive"], "tax_rate": t["rate"].get("id")}
                for t in taxes or []
            ],
        }

    def _mark_paid(self, inv: Obj) -> None:
        inv["attempt_count"] += 1
        charge = self._charge(inv["customer"], inv["amount_due"], inv["currency"], invoice=inv["id"])
        inv.update(
            status="paid",
            amount_paid=inv["amount_due"],
            charge=charge["id"],
            payment_intent=charge["payment_intent"],
            next_payment_attempt=None,
        )
        inv["status_transitions"]["paid_at"] = self.time()

    def _charge(self, customer: str | None, amount: int, currency: str, *, invoice: str | None = None) -> Obj:
        return self._store(
            {
                "id": self.new_id("ch"),
                "object": "charge",
                "customer": customer,
                "amount": amount,
                "amount_refunded": 0,
                "currency": currency,
                "payment_intent": self.new_id("pi"),
                "invoice": invoice,
                "refunded": False,
                "refunds": {"object": "list", "data": []},
                "status": "succeeded",
                "created": self.time(),
            }
        )

    # payment intents (auto top-up: off-session, confirmed at once)

    def _intent(self, p: dict[str, Any], status: str) -> Obj:
        return self._store(
            {
                "id": self.new_id("pi"),
                "object": "payment_intent",
                "amount": int(p["amount"]),
                "currency": p["currency"],
                "customer": p.get("customer"),
                "payment_method": p.get("payment_method"),
                "off_session": _bool(p.get("off_session")),
                "confirm": _bool(p.get("confirm")),
                "description": p.get("description"),
                "metadata": p.get("metadata", {}),
                "status": status,
                "latest_charge": None,
                "last_payment_error": None,
                "created": self.time(),
                "livemode": False,
            }
        )

    def _post_payment_intents(self, rest: list[str], p: dict[str, Any]) -> tuple[int, Obj]:
        if rest:
            return self._invalid("only creating a payment intent is faked")
        if not p.get("customer") or not p.get("payment_method"):
            return self._invalid("an off-session payment needs a customer and a payment method", "payment_method")
        pi = self._intent(p, "succeeded")
        charge = self._charge(pi["customer"], pi["amount"], pi["currency"])
        charge.update(payment_intent=pi["id"], metadata=pi["metadata"])
        pi["latest_charge"] = charge["id"]
        self.event("payment_intent.succeeded", pi)
        return 200, pi

    def _declined_intent(self, p: dict[str, Any], error: Obj) -> Obj:
        pi = self._intent(p, "requires_payment_method")
        pi["last_payment_error"] = {**error["error"], "payment_method": {"id": p.get("payment_method")}}
        self.event("payment_intent.payment_failed", pi)
        return {"error": {**error["error"], "payment_intent": copy.deepcopy(pi)}}

    def _checkout_intent(self, sess: Obj, charge: Obj) -> Obj:
        """The PaymentIntent of a paid Checkout that asked to save the card for off-session use."""
        pi = self._store(
            {
                "id": charge["payment_intent"],
                "object": "payment_intent",
                "amount": charge["amount"],
                "currency": charge["currency"],
                "customer": sess["customer"],
                "payment_method": self.new_id("pm"),
                "setup_future_usage": sess["_payment_intent_data"]["setup_future_usage"],
                "metadata": sess["_payment_intent_data"].get("metadata", {}),
                "status": "succeeded",
                "latest_charge": charge["id"],
                "created": self.time(),
                "livemode": False,
            }
        )
        return pi

    def intent_succeeded(self, payment_intent_id: str) -> Obj:
        """`payment_intent.succeeded` of a Checkout's intent (not kept in `events`, so tests that
        count or reconcile events see what they saw before; a test delivers it when it wants)."""
        return self.event("payment_intent.succeeded", self.objects[payment_intent_id], record=False)

    def last_event(self, event_type: str) -> Obj:
        return next(e for e in reversed(self.events) if e["type"] == event_type)

    # -- the Stripe side of the story ----------------------------------------------------------------------

    def complete_checkout(self, session_id: str, *, trial: bool = True) -> list[Obj]:
        """The customer paid: the events Stripe sends, in Stripe's order."""
        sess = self.objects[session_id]
        sess.update(status="complete", payment_status="paid")
        events: list[Obj] = []
        if sess["mode"] == "payment":
            for d in sess.get("discounts") or []:
                promo = self.objects[d["promotion_code"]]
                promo["times_redeemed"] += 1
                self.objects[promo["promotion"]["coupon"]]["times_redeemed"] += 1
            charge = self._charge(sess["customer"], sess["amount_total"], sess["currency"])
            charge["metadata"] = sess["_payment_intent_data"].get("metadata", {})
            sess["payment_intent"] = charge["payment_intent"]
            if sess["_payment_intent_data"].get("setup_future_usage"):
                self._checkout_intent(sess, charge)
            events.append(self.event("checkout.session.completed", self._public(sess)))
            return events
        price = self.objects[sess["_line_items"][0]["price"]]
        sub_data = sess["_subscription_data"]
        trial_days = int(sub_data.get("trial_period_days", 0)) if trial else 0
        start = self.time()
        end = start + trial_days * 86400 if trial_days else period_end(start, price["recurring"]["interval"])
        sub = self._store(
            {
                "id": self.new_id("sub"),
                "object": "subscription",
                "customer": sess["customer"],
                "status": "trialing" if trial_days else "active",
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": self.new_id("si"),
                            "object": "subscription_item",
                            "price": copy.deepcopy(price),
                            "quantity": 1,
                            "current_period_start": start,
                            "current_period_end": end,
                            "tax_rates": list(sess["_line_items"][0].get("tax_rates") or []),
                            "_automatic_tax": bool(sess["automatic_tax"]["enabled"]),
                        }
                    ],
                },
                "current_period_start": start,
                "current_period_end": end,
                "trial_end": end if trial_days else None,
                "cancel_at_period_end": False,
                "canceled_at": None,
                "ended_at": None,
                "schedule": None,
                "metadata": dict(sub_data.get("metadata", {})),
                "discounts": [],
                "created": start,
            }
        )
        for d in sess.get("discounts") or []:
            promo = self.objects[d["promotion_code"]]
            sub["discounts"].append(self._new_discount(promo, subscription=sub["id"], customer=sess["customer"])["id"])
        sess["subscription"] = sub["id"]
        events.append(self.event("customer.subscription.created", sub))
        amount = 0 if trial_days else sess["amount_subtotal"]
        discount = 0 if trial_days else sess["total_details"]["amount_discount"]
        inv = self._store(self._cycle_invoice(sub, amount, "subscription_create", discount=discount))
        if sess["total_details"]["amount_discount"] and amount:
            inv["total_discount_amounts"] = [
                {"amount": sess["total_details"]["amount_discount"], "discount": sub["discounts"][0]}
            ]
        if inv["total"]:
            self._mark_paid(inv)
        else:
            inv.update(status="paid")
            inv["status_transitions"]["paid_at"] = start
        events.append(self.event("invoice.paid", inv))
        events.append(self.event("checkout.session.completed", self._public(sess)))
        return events

    def _cycle_invoice(self, sub: Obj, amount: int, reason: str, *, discount: int = 0) -> Obj:
        """A period's invoice: the price's line (before discount, as Stripe shows lines), taxed by
        the item's tax rates (or Stripe Tax) after the discount."""
        item = sub["items"]["data"][0]
        price = item["price"]
        _, exclusive, breakdown = self._taxes(
            max(amount - discount, 0), list(item.get("tax_rates") or []), bool(item.get("_automatic_tax"))
        )
        line = {
            "id": self.new_id("il"),
            "object": "line_item",
            "amount": amount,
            "currency": price["currency"],
            "description": f"1 x plan ({price['id']})",
            "quantity": 1,
            "proration": False,
            "period": {"start": sub["current_period_start"], "end": sub["current_period_end"]},
            "price": {"id": price["id"]},
            "tax_rates": [copy.deepcopy(self.objects[r]) for r in item.get("tax_rates") or []],
        }
        total = amount - discount + exclusive
        return self._invoice(
            sub["customer"], sub["id"], [line], total, price["currency"], billing_reason=reason, taxes=breakdown
        )

    @staticmethod
    def _public(obj: Obj) -> Obj:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def renew(self, sub_id: str, *, pay: bool = True) -> list[Obj]:
        """The next period starts; its invoice is paid or its first attempt fails."""
        sub = self.objects[sub_id]
        item = sub["items"]["data"][0]
        start = sub["current_period_end"]
        sched = self.objects.get(sub.get("schedule") or "")
        if sched is not None and sched["status"] == "active":
            phases = sched["phases"]
            if sched.get("_in_last_phase"):
                sched["status"] = "released"
                sub["schedule"] = None
            elif len(phases) > 1 and phases[0].get("end_date") == start:
                # The schedule's next phase starts: the subscription bills its price from now on.
                item["price"] = copy.deepcopy(self.objects[phases[1]["items"][0]["price"]])
                sched["_in_last_phase"] = True
        end = period_end(start, item["price"]["recurring"]["interval"])
        sub.update(current_period_start=start, current_period_end=end, status="active", trial_end=sub["trial_end"])
        item.update(current_period_start=start, current_period_end=end)
        inv = self._store(self._cycle_invoice(sub, item["price"]["unit_amount"], "subscription_cycle"))
        inv["status"] = "open"
        events = []
        if pay:
            self._mark_paid(inv)
            events.append(self.event("invoice.paid", inv))
            events.append(self.event("customer.subscription.updated", sub))
        else:
            events.extend(self.fail_invoice(inv["id"]))
        return events

    def fail_invoice(self, invoice_id: str, *, retry_in: int = 3 * 86400) -> list[Obj]:
        inv = self.objects[invoice_id]
        inv["attempt_count"] += 1
        inv["next_payment_attempt"] = self.time() + retry_in
        events = [self.event("invoice.payment_failed", inv)]
        sub = self.objects.get(inv["subscription"] or "")
        if sub is not None and sub["status"] != "past_due":
            sub["status"] = "past_due"
            events.append(self.event("customer.subscription.updated", sub))
        return events

    def pay_invoice(self, invoice_id: str) -> list[Obj]:
        inv = self.objects[invoice_id]
        self._mark_paid(inv)
        events = [self.event("invoice.paid", inv)]
        sub = self.objects.get(inv["subscription"] or "")
        if sub is not None and sub["status"] == "past_due":
            sub["status"] = "active"
            events.append(self.event("customer.subscription.updated", sub))
        return events

    def _refund(self, charge_id: str, amount: int, *, metadata: Obj | None = None) -> Obj:
        ch = self.objects[charge_id]
        refund = self._store(
            {
                "id": self.new_id("re"),
                "object": "refund",
                "amount": amount,
                "charge": charge_id,
                "payment_intent": ch["payment_intent"],
                "status": "succeeded",
                "reason": None,
                "metadata": metadata or {},
                "created": self.time(),
            }
        )
        ch["refunds"]["data"].insert(0, refund)
        ch["amount_refunded"] += amount
        ch["refunded"] = ch["amount_refunded"] >= ch["amount"]
        self.event("charge.refunded", ch)
        return refund

    def refund(self, charge_id: str, amount: int | None = None) -> Obj:
        """A refund made in Stripe's dashboard: its `charge.refunded` event."""
        ch = self.objects[charge_id]
        self._refund(charge_id, ch["amount"] - ch["amount_refunded"] if amount is None else amount)
        return self.last_event("charge.refunded")

    def dispute(self, charge_id: str, amount: int | None = None) -> Obj:
        ch = self.objects[charge_id]
        dispute = self._store(
            {
                "id": self.new_id("dp"),
                "object": "dispute",
                "amount": ch["amount"] if amount is None else amount,
                "currency": ch["currency"],
                "charge": charge_id,
                "payment_intent": ch["payment_intent"],
                "status": "needs_response",
                "reason": "fraudulent",
                "created": self.time(),
            }
        )
        return self.event("charge.dispute.created", dispute)

    def close_dispute(self, dispute_id: str, *, won: bool) -> Obj:
        d = self.objects[dispute_id]
        d["status"] = "won" if won else "lost"
        return self.event("charge.dispute.closed", d)

    def end_subscription(self, sub_id: str) -> Obj:
        sub = self.objects[sub_id]
        sub.update(status="canceled", ended_at=self.time(), canceled_at=sub["canceled_at"] or self.time())
        return self.event("customer.subscription.deleted", sub)

    def charge_of_session(self, session_id: str) -> Obj:
        pi = self.objects[session_id]["payment_intent"]
        return next(c for c in self.of_type("charge") if c["payment_intent"] == pi)


# -- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    fake = FakeStripe()
    await fake.start()
    yield fake
    await fake.stop()


def stripe_settings(settings: Settings, fake: FakeStripe, **extra: Any) -> Settings:
    # A small pool: concurrency tests still race (requests queue for connections), while several
    # test sessions share one PostgreSQL's connection limit.
    values: dict[str, Any] = {"db_pool_size": 5, **extra}
    return dataclasses.replace(
        settings,
        stripe_api_key=API_KEY,
        stripe_api_base=fake.url,
        stripe_webhook_secrets=SECRETS,
        **values,
    )


# -- LedgerX-side helpers for the payment tests ------------------------------------------------------------

CREATE_PACK = """
mutation($i: CreateCreditPackInput!) {
  createCreditPack(input: $i) { id name credits price { amount currency } stripePriceId archived }
}
"""
CREATE_PLAN = """
mutation($i: CreatePlanInput!) {
  createPlan(input: $i) {
    id name tier interval price { amount currency } includedCredits stripePriceId trialDays
    rateLimit { burst perSecond } monthlyQuotas { metric limit } features
  }
}
"""
CHECKOUT = "mutation($i: CreateCheckoutSessionInput!) { createCheckoutSession(input: $i) { id url } }"


async def create_pack(gql: Any, admin: Any, *, credits: int = 1000, amount: int = 1000, currency: str = "usd") -> str:
    data = await gql.ok(
        CREATE_PACK,
        {
            "i": {
                "name": f"{credits} credits",
                "credits": str(credits),
                "price": {"amount": amount, "currency": currency},
            }
        },
        token=admin.token,
    )
    return str(data["createCreditPack"]["id"])


async def create_plan(
    gql: Any,
    admin: Any,
    *,
    name: str,
    tier: str = "PRO",
    interval: str = "MONTH",
    amount: int = 2000,
    included: int = 0,
    trial_days: int = 0,
    rate_limit: dict[str, Any] | None = None,
    quotas: dict[str, int] | None = None,
) -> str:
    data = await gql.ok(
        CREATE_PLAN,
        {
            "i": {
                "name": name,
                "tier": tier,
                "interval": interval,
                "price": {"amount": amount, "currency": "USD"},
                "includedCredits": str(included),
                "trialDays": trial_days,
                "rateLimit": rate_limit,
                "monthlyQuotas": [{"metric": k, "limit": str(v)} for k, v in (quotas or {}).items()],
                "features": [f"{name} feature"],
            }
        },
        token=admin.token,
    )
    return str(data["createPlan"]["id"])


async def checkout(gql: Any, user: Any, project_id: str, **target: str) -> str:
    data = await gql.ok(
        CHECKOUT,
        {
            "i": {
                "projectId": project_id,
                "successUrl": "https://app.example.com/ok",
                "cancelUrl": "https://app.example.com/no",
                **target,
            }
        },
        token=user.token,
    )
    return str(data["createCheckoutSession"]["id"])
