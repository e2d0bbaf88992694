"""Verify the webhooks LedgerX sends (Standard Webhooks: standardwebhooks.com).

Each delivery carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, space-separated when more than one secret signs,
as during a rotation). Secrets look like `whsec_<base64>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from ledgerx_client.errors import WebhookVerificationError

DEFAULT_TOLERANCE = 300  # seconds, either way


def _secret_bytes(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the webhook secret is not whsec_<base64>") from None


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}", field=name)


def verify_webhook(
    secret: str | bytes,
    body: bytes | str,
    headers: Mapping[str, str],
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> Any:
    """The delivery's JSON payload once its signature verifies with `secret` (the endpoint's
    `whsec_…`, or its raw bytes) and its timestamp is within `tolerance` seconds of now.

    Pass the body exactly as received (bytes, before any JSON parsing). Raises
    `WebhookVerificationError` (code WEBHOOK_VERIFICATION_FAILED) otherwise.
    """
    key = _secret_bytes(secret)
    payload = body.encode() if isinstance(body, str) else body
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a Unix time", field="webhook-timestamp") from None
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise WebhookVerificationError("the webhook's timestamp is too old", field="webhook-timestamp")
    if timestamp > current + tolerance:
        raise WebhookVerificationError("the webhook's timestamp is in the future", field="webhook-timestamp")
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    expected = base64.b64encode(mac)
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            try:
                return json.loads(payload)
            except ValueError:
                raise WebhookVerificationError("the webhook's body is not JSON") from None
    raise WebhookVerificationError("no webhook signature matches the secret", field="webhook-signature")
