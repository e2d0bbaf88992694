"""Log-in limiting that counts failures, so guessing wrong cannot lock the real user out.

Three failure counters, each a leaky bucket in Redis (a level that drains at a fixed rate):

- per (case-folded email, client IP): tight (`LOGIN_LIMIT_PER_EMAIL`, default 5). When full,
  that client is refused for that email, the right password included: it has been guessing.
- per case-folded email, over every client: loose (10x the pair limit). When full (a guessing
  attack spread over many IPs), only clients with a failure of their own on that email are
  refused; a client that has not been failing still gets its password checked, so the owner
  signs in during the attack, and each attacking IP gets one guess per drain period.
- per client IP, over every email (`LOGIN_LIMIT_PER_IP`, default 30): credential stuffing
  from one address.

Only failures count. Each attempt reserves a failure atomically before the password is checked
(so a burst of concurrent guesses cannot slip past the check together); a right password gives
the reservation back and clears the (email, IP) counter. One round trip for the check and one
to settle. Without Redis the same rules run on counters in this process (per instance), like
the request rate limiter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
import unicodedata

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ledgerx import metrics

log = logging.getLogger("ledgerx.auth.login_limits")

# The email-wide counter is this many times looser than the per-(email, IP) one.
EMAIL_FACTOR = 10

# KEYS: pair, email, ip. ARGV[1]: mode ('attempt' | 'success'); ARGV[2]: now in ms (-1: Redis'
# clock); then capacity and drain per ms of pair, email and ip.
# attempt -> {refused_by (0 none, 1 pair, 2 email, 3 ip), retry ms}; a granted attempt adds one
# to every counter (the reservation). success -> gives the reservation back, clears the pair.
_SCRIPT = """
local mode = ARGV[1]
local now = tonumber(ARGV[2])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local cap = {tonumber(ARGV[3]), tonumber(ARGV[5]), tonumber(ARGV[7])}
local rate = {tonumber(ARGV[4]), tonumber(ARGV[6]), tonumber(ARGV[8])}
local lvl = {}
for i = 1, 3 do
  local v = redis.call('HMGET', KEYS[i], 'level', 'ts')
  local l = tonumber(v[1])
  local ts = tonumber(v[2])
  if l == nil or ts == nil then
    l = 0
  elseif now > ts then
    l = math.max(0, l - (now - ts) * rate[i])
  end
  lvl[i] = l
end
local function store(i)
  if lvl[i] <= 0 then
    redis.call('DEL', KEYS[i])
  else
    redis.call('HSET', KEYS[i], 'level', tostring(lvl[i]), 'ts', now)
    redis.call('PEXPIRE', KEYS[i], math.ceil(lvl[i] / rate[i]) + 1000)
  end
end
if mode == 'success' then
  lvl[1] = 0
  lvl[2] = math.max(0, lvl[2] - 1)
  lvl[3] = math.max(0, lvl[3] - 1)
  for i = 1, 3 do store(i) end
  return {0, 0}
end
local over = {}
for i = 1, 3 do over[i] = lvl[i] - (cap[i] - 1) end
if over[1] > 0 then
  return {1, math.ceil(over[1] / rate[1])}
end
if over[3] > 0 then
  return {3, math.ceil(over[3] / rate[3])}
end
if over[2] > 0 and lvl[1] > 0 then
  return {2, math.ceil(math.min(over[2] / rate[2], lvl[1] / rate[1]))}
end
for i = 1, 3 do
  lvl[i] = lvl[i] + 1
  store(i)
end
return {0, 0}
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Bucket:
    capacity: int  # failures held before refusing
    per_second: float  # failures forgotten per second

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.per_second <= 0:
            raise ValueError("a failure bucket needs capacity >= 1 and a positive drain rate")


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    scope: str  # "email_ip" | "email" | "ip"
    retry_after_s: int


def fold_email(email: str) -> str:
    """The counting key of an address: NFKC, trimmed, case-folded (so `ADA@…`, `ada@…` and their
    full-width or other-case spellings share one counter)."""
    return unicodedata.normalize("NFKC", email).strip().casefold()


def _digest(value: str) -> str:
    # Keys carry a digest, not the address: Redis dumps and MONITOR do not list who is attacked.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class LoginThrottle:
    RETRY_REDIS_AFTER_S = 1.0
    _SCOPES = {1: "email_ip", 2: "email", 3: "ip"}

    def __init__(self, redis: Redis, *, prefix: str, pair: Bucket, per_ip: Bucket) -> None:
        self.redis = redis
        self.prefix = prefix + "login:"
        self.pair = pair
        self.email = Bucket(pair.capacity * EMAIL_FACTOR, pair.per_second * EMAIL_FACTOR)
        self.per_ip = per_ip
        self._script = redis.register_script(_SCRIPT)
        self._local: dict[str, tuple[float, float]] = {}
        self._down_until = 0.0

    def _keys(self, email: str, ip: str | None) -> list[str]:
        e = _digest(fold_email(email))
        i = ip or "-"
        return [f"{self.prefix}pair:{e}:{i}", f"{self.prefix}email:{e}", f"{self.prefix}ip:{i}"]

    def _args(self, mode: str) -> list[str | int | float]:
        args: list[str | int | float] = [mode, -1]
        for b in (self.pair, self.email, self.per_ip):
            args += [b.capacity, b.per_second / 1000]
        return args

    async def attempt(self, email: str, ip: str | None) -> Refusal | None:
        """Reserve one failure for this attempt, or say why the client is refused."""
        code, retry_ms = await self._run(self._keys(email, ip), "attempt")
        if code == 0:
            return None
        return Refusal(self._SCOPES[code], max(1, math.ceil(retry_ms / 1000)))

    async def succeeded(self, email: str, ip: str | None) -> None:
        """The password was right: give the reservation back and clear this client's counter."""
        await self._run(self._keys(email, ip), "success")

    async def _run(self, keys: list[str], mode: str) -> tuple[int, int]:
        if time.monotonic() >= self._down_until:
            try:
                code, retry = await self._script(keys=keys, args=self._args(mode))
            except (RedisError, OSError) as exc:
                if self._down_until == 0.0:
                    log.warning("redis unreachable; log-in limits are per instance", extra={"error": repr(exc)})
                self._down_until = time.monotonic() + self.RETRY_REDIS_AFTER_S
            else:
                if self._down_until:
                    self._down_until = 0.0
                    self._local.clear()
                return int(code), int(retry)
        metrics.RATELIMIT_FALLBACKS.inc()
        return self._local_run(keys, mode, time.time() * 1000)

    def _local_run(self, keys: list[str], mode: str, now: float) -> tuple[int, int]:
        """The script's rules on counters in this process (Redis is down)."""
        buckets = (self.pair, self.email, self.per_ip)
        lvl: list[float] = []
        for key, b in zip(keys, buckets, strict=True):
            level, ts = self._local.get(key, (0.0, now))
            lvl.append(max(0.0, level - max(0.0, now - ts) * b.per_second / 1000))
        if mode == "success":
            lvl = [0.0, max(0.0, lvl[1] - 1), max(0.0, lvl[2] - 1)]
        else:
            over = [lvl[i] - (buckets[i].capacity - 1) for i in range(3)]
            rates = [b.per_second / 1000 for b in buckets]
            if over[0] > 0:
                return 1, math.ceil(over[0] / rates[0])
            if over[2] > 0:
                return 3, math.ceil(over[2] / rates[2])
            if over[1] > 0 and lvl[0] > 0:
                return 2, math.ceil(min(over[1] / rates[1], lvl[0] / rates[0]))
            lvl = [x + 1 for x in lvl]
        for key, level in zip(keys, lvl, strict=True):
            if level > 0:
                self._local[key] = (level, now)
            else:
                self._local.pop(key, None)
        if len(self._local) > 100_000:  # bound memory during a long outage
            self._local.clear()
        return 0, 0
