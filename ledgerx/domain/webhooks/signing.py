"""Standard Webhooks signatures (standardwebhooks.com): what every delivery carries.

Headers: `webhook-id` (the event's `evt_` id, the same on every attempt and redelivery, so a
receiver can drop duplicates of an at-least-once delivery), `webhook-timestamp` (Unix seconds of
this attempt) and `webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one per
secret that signs, space-separated (during a rotation the previous secret signs too, so receivers
still holding it keep verifying). Secrets travel as `whsec_<base64 of the raw bytes>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def encode_secret(raw: bytes) -> str:
    """The secret as the API shows it (once) and receivers configure it: `whsec_<base64>`."""
    return SECRET_PREFIX + base64.b64encode(raw).decode()


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(msg_id: str, timestamp: int, body: bytes, signing_secrets: Sequence[bytes]) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in signing_secrets),
    }
