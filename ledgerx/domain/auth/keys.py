"""Signing keys for access tokens: several at once (the first signs, all verify), each with a kid.

The kid is the RFC 7638 JWK thumbprint, so it is stable for a key wherever it is loaded.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ledgerx.settings import Settings, SettingsError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclasses.dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    alg: str
    private_key: PrivateKey
    public_jwk: dict[str, Any]

    @property
    def public_key(self) -> Any:
        return self.private_key.public_key()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _load(pem: str) -> SigningKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name != "secp256r1":
            raise SettingsError("JWT_PRIVATE_KEYS: EC keys must use P-256 (ES256)")
        alg, jwk = "ES256", json.loads(ECAlgorithm.to_jwk(key.public_key()))
        required: tuple[str, ...] = ("crv", "kty", "x", "y")
    elif isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise SettingsError("JWT_PRIVATE_KEYS: RSA keys must be at least 2048 bits")
        alg, jwk = "RS256", json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        required = ("e", "kty", "n")
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        alg, jwk = "EdDSA", json.loads(OKPAlgorithm.to_jwk(key.public_key()))
        required = ("crv", "kty", "x")
    else:
        raise SettingsError("JWT_PRIVATE_KEYS: only EC P-256, RSA and Ed25519 keys are supported")
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    kid = _b64(hashlib.sha256(canonical.encode()).digest())
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return SigningKey(kid=kid, alg=alg, private_key=key, public_jwk=jwk)


def generate_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class KeyRing:
    def __init__(self, pems: tuple[str, ...] | list[str]) -> None:
        if not pems:
            raise SettingsError("JWT_PRIVATE_KEYS: at least one key is required")
        self.keys = [_load(p) for p in pems]
        self.by_kid = {k.kid: k for k in self.keys}

    @property
    def signing(self) -> SigningKey:
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk for k in self.keys]}

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        if settings.jwt_private_keys:
            return cls(settings.jwt_private_keys)
        # Development only (production refuses to start without keys): keep one in the data dir
        # so tokens survive restarts.
        path = Path(settings.data_dir) / "jwt-dev-key.pem"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(generate_pem())
        return cls([path.read_text()])


def derived_secrets(ring: KeyRing, label: str) -> tuple[bytes, ...]:
    """Secrets for another use of the same key material (document links): one per configured key,
    the signing key's first, so a link made before a key rotation still checks until it expires.
    Derived one-way (SHA-256 over a label and the private key), so a link never reveals the key."""
    out = []
    for k in ring.keys:
        der = k.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        out.append(hashlib.sha256(b"ledgerx:" + label.encode() + b"\0" + der).digest())
    return tuple(out)
