"""argon2id password hashing with a policy, rehash-on-login and equal work for unknown emails."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ledgerx.domain.errors import BadInput

MIN_LENGTH = 10
# argon2 cost grows with input; an upper bound keeps one request from burning CPU.
MAX_LENGTH = 256

# A small deny-list of the passwords that credential-stuffing lists lead with.
_COMMON = frozenset(
    {
        "password",
        "password1",
        "password12",
        "password123",
        "passw0rd",
        "123456789",
        "1234567890",
        "12345678910",
        "qwertyuiop",
        "qwerty1234",
        "iloveyou12",
        "letmein123",
        "welcome123",
        "administrator",
        "abc1234567",
        "changeme123",
        "0123456789",
        "1q2w3e4r5t",
        "football12",
    }
)


def check_policy(password: str, email: str | None = None) -> None:
    """Raise BAD_USER_INPUT (field `password`) with the reason when the password is too weak."""
    if len(password) < MIN_LENGTH:
        raise BadInput(f"password must be at least {MIN_LENGTH} characters", field="password")
    if len(password) > MAX_LENGTH:
        raise BadInput(f"password must be at most {MAX_LENGTH} characters", field="password")
    if len(set(password)) < 4:
        raise BadInput("password must use at least 4 different characters", field="password")
    lowered = password.lower()
    if lowered in _COMMON:
        raise BadInput("password is too common", field="password")
    if email and lowered == email.lower():
        raise BadInput("password must not be the email address", field="password")


class Passwords:
    """Hashing runs in a worker thread so argon2's deliberate cost never stalls the event loop."""

    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> tuple[bool, bool]:
        """Return (matches, needs_rehash).

        With no stored hash (unknown email, or a Google-only account) a dummy hash is verified
        instead, so the response time does not tell whether the email exists.
        """
        if stored is None:
            if self._dummy is None:
                self._dummy = await self.hash("dummy-password-for-timing")
            await asyncio.to_thread(self._verify, self._dummy, password)
            return False, False
        ok = await asyncio.to_thread(self._verify, stored, password)
        return ok, ok and self._hasher.check_needs_rehash(stored)

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
