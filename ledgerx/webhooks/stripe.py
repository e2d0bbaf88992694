"""`POST /webhooks/stripe`: verify the signature on the raw body, store the event once, answer 2xx.

Nothing is processed here (Stripe wants an answer within seconds and retries otherwise); the
processor loop does the work. Refused with 400 and nothing stored: a missing or bad signature
(checked with the SDK against every configured secret, so secrets can rotate), a timestamp older
than the tolerance (300 s) or as far in the future, a body altered after signing, or a body that
is not a Stripe event or cannot be stored as one (`event_json`: too deep, a NUL in its id, NaN...),
each with its reason in `{"error": ...}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import stripe
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ledgerx.domain.payments import event_json, inbox
from ledgerx.domain.payments.service import PaymentsService

log = logging.getLogger("ledgerx.webhooks.stripe")

MAX_BODY = 1 << 20


def _refuse(message: str, status: int = 400) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def verify(payload: bytes, header: str | None, secrets: tuple[str, ...], tolerance: int) -> bool:
    """True when any configured secret signed this body within the tolerance."""
    if not header or not secrets:
        return False
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance)
        except stripe.SignatureVerificationError:
            continue
        # The SDK refuses stale timestamps; refuse ones from the future the same way.
        stamps = [p[2:] for p in header.split(",") if p.startswith("t=")]
        try:
            if stamps and int(stamps[0]) > time.time() + tolerance:
                return False
        except ValueError:
            return False
        return True
    return False


async def receive(payments: PaymentsService, request: Request, notify: Callable[[], None] | None = None) -> Response:
    """The route's work; `notify` wakes the local processor after a new event was stored."""
    settings = payments.settings
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        return _refuse("payload too large", 413)
    payload = await request.body()
    if len(payload) > MAX_BODY:
        return _refuse("payload too large", 413)
    if not settings.stripe_webhook_secrets:
        log.error("a Stripe webhook arrived but STRIPE_WEBHOOK_SECRET is not set; refused")
        return _refuse("webhooks are not configured")
    header = request.headers.get("stripe-signature")
    if not verify(payload, header, settings.stripe_webhook_secrets, settings.stripe_webhook_tolerance):
        return _refuse("invalid signature")
    # Parsed only once the signature holds: an anonymous caller never reaches the JSON parser.
    try:
        event = event_json.parse(payload)
    except event_json.Refused as exc:
        log.warning("a signed Stripe webhook was refused: %s", exc.reason)
        return _refuse(exc.reason)
    stored = await inbox.store(payments, event)
    if stored.created and notify is not None:
        notify()
    return JSONResponse({"received": True, "duplicate": not stored.created})
