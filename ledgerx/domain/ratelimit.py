"""Token-bucket rate limits in Redis, one round trip per check (or per lease), with a local fallback.

The bucket is a hash {tokens, ts}; a Lua script refills and spends atomically, so any number of
app instances share one limit.

A fast limit (one whose bucket refills more than one token per `LEASE_SECONDS`) is spent through
leases: the round trip that admits a request also takes up to `LEASE_SECONDS` of refill from the
shared bucket, and the next requests of that key on this instance spend it from memory. Tokens are
taken before they are spent, so the instances together never admit more than the shared bucket
holds; an instance may refuse up to one lease (or its unspent lease may expire, `LEASE_TTL`) early.
A slow limit (the default 20/s is one token per lease) and any check that also reads a flag (a
session's revocation) keep one round trip per request. When Redis cannot be reached the check falls back to a bucket in
this process (limits then hold per instance), logs one warning per outage, raises a gauge, and
goes back to Redis by itself once it answers again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ledgerx import metrics

log = logging.getLogger("ledgerx.ratelimit")

# KEYS[1] bucket, KEYS[2] (optional) a flag key whose existence the caller wants to know in the
# same round trip (the gateway: "was this session revoked?"); ARGV: capacity, refill tokens per
# second, cost, now in ms (-1: Redis' clock).
# ARGV[5] (optional, default the cost): how many tokens to take when at least the cost is there (a
# lease: up to this many, whole tokens).
# Returns {allowed, tokens left (string: Lua numbers are truncated on return), retry ms, reset ms,
# flag exists (0/1), tokens taken}.
_TOKEN_BUCKET = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local want = tonumber(ARGV[5] or ARGV[3])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate / 1000)
  ts = now
end
local allowed = 0
local retry = 0
local taken = 0
if tokens >= cost then
  taken = math.max(cost, math.min(want, math.floor(tokens)))
  tokens = tokens - taken
  allowed = 1
else
  retry = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', ts)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * 1000 / rate) + 1000)
local flagged = 0
if #KEYS > 1 then
  flagged = redis.call('EXISTS', KEYS[2])
end
return {allowed, tostring(tokens), retry, math.ceil((capacity - tokens) * 1000 / rate), flagged, taken}
"""

# A lease is at most this much of a limit's refill, a tenth of its burst, and LEASE_MAX tokens; what
# it leaves unspent after LEASE_TTL is given up (never returned: the bucket refills it).
LEASE_SECONDS = 0.05
LEASE_MAX = 1000
LEASE_TTL = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    capacity: int  # burst
    per_second: float  # refill rate

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.per_second <= 0:
            raise ValueError("a limit needs capacity >= 1 and a positive refill rate")


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_ms: int
    reset_ms: int
    degraded: bool = False
    # Whether the `flag` key given to `hit` exists (always False when degraded: Redis was not asked).
    flagged: bool = False

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.retry_after_ms / 1000))

    @property
    def reset_s(self) -> int:
        return math.ceil(self.reset_ms / 1000)


def lease_size(limit: Limit) -> int:
    """How many tokens one round trip takes for `limit` (1: no lease)."""
    return max(1, min(LEASE_MAX, int(limit.per_second * LEASE_SECONDS), limit.capacity // 10))


@dataclasses.dataclass(slots=True)
class _Lease:
    tokens: int  # taken from the shared bucket, not yet spent
    capacity: int  # of the limit it was taken for (a changed limit drops it)
    left: int  # the shared bucket's tokens when it was taken (RateLimit-Remaining, approximately)
    reset_ms: int
    expires: float  # time.monotonic()


class RateLimiter:
    RETRY_REDIS_AFTER_S = 1.0

    def __init__(self, redis: Redis, *, prefix: str, clock: Callable[[], float] | None = None) -> None:
        self.redis = redis
        self.prefix = prefix + "rl:"
        self.clock = clock  # injected in tests; None means Redis' own clock
        self._script = redis.register_script(_TOKEN_BUCKET)
        self._local: dict[str, tuple[float, float]] = {}
        self._leases: dict[str, _Lease] = {}
        self._down_since: float | None = None
        self._next_try = 0.0

    @property
    def degraded(self) -> bool:
        return self._down_since is not None

    async def hit(self, key: str, limit: Limit, cost: int = 1, *, flag: str | None = None) -> Decision:
        """Spend `cost` tokens of `key`'s bucket. `flag`: a full Redis key whose existence is
        reported as `Decision.flagged`, read by the same script call (no extra round trip)."""
        size = lease_size(limit) if flag is None else 1
        if size > 1:
            spent = self._spend_lease(key, limit, cost)
            if spent is not None:
                return spent
        now_ms = int(self.clock() * 1000) if self.clock else -1
        if self._down_since is None or time.monotonic() >= self._next_try:
            keys = [self.prefix + key] if flag is None else [self.prefix + key, flag]
            try:
                allowed, tokens, retry, reset, flagged, taken = await self._script(
                    keys=keys, args=[limit.capacity, limit.per_second, cost, now_ms, cost - 1 + size]
                )
            except (RedisError, OSError) as exc:
                self._mark_down(exc)
            else:
                self._mark_up()
                left = int(float(tokens))
                if int(taken) > cost:
                    self._keep_lease(key, limit, int(taken) - cost, left, int(reset))
                return Decision(bool(allowed), limit.capacity, left, int(retry), int(reset), flagged=bool(flagged))
        metrics.RATELIMIT_FALLBACKS.inc()
        return self._local_hit(key, limit, cost, now_ms)

    def _spend_lease(self, key: str, limit: Limit, cost: int) -> Decision | None:
        lease = self._leases.get(key)
        if lease is None:
            return None
        if lease.expires <= time.monotonic() or lease.capacity != limit.capacity or lease.tokens < cost:
            if lease.expires <= time.monotonic() or lease.capacity != limit.capacity:
                del self._leases[key]
            return None
        lease.tokens -= cost
        return Decision(True, limit.capacity, lease.left + lease.tokens, 0, lease.reset_ms)

    def _keep_lease(self, key: str, limit: Limit, tokens: int, left: int, reset_ms: int) -> None:
        lease = self._leases.get(key)
        if lease is not None and lease.capacity == limit.capacity and lease.expires > time.monotonic():
            tokens += lease.tokens  # concurrent round trips of one key: both leases are spent here
        if len(self._leases) > 100_000:
            self._leases.clear()
        self._leases[key] = _Lease(tokens, limit.capacity, left, reset_ms, time.monotonic() + LEASE_TTL)

    def _local_hit(self, key: str, limit: Limit, cost: int, now_ms: int) -> Decision:
        now = now_ms if now_ms >= 0 else time.time() * 1000
        tokens, ts = self._local.get(key, (float(limit.capacity), now))
        if now > ts:
            tokens = min(float(limit.capacity), tokens + (now - ts) * limit.per_second / 1000)
            ts = now
        allowed = tokens >= cost
        retry = 0
        if allowed:
            tokens -= cost
        else:
            retry = math.ceil((cost - tokens) * 1000 / limit.per_second)
        self._local[key] = (tokens, ts)
        if len(self._local) > 100_000:  # bound memory during a long outage
            self._local.clear()
        reset = math.ceil((limit.capacity - tokens) * 1000 / limit.per_second)
        return Decision(allowed, limit.capacity, int(tokens), retry, reset, degraded=True)

    def _mark_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            metrics.RATELIMIT_DEGRADED.set(1)
            log.warning("redis unreachable; rate limits are per instance until it returns", extra={"error": repr(exc)})
        self._next_try = time.monotonic() + self.RETRY_REDIS_AFTER_S

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.warning(
                "redis reachable again; shared rate limits resumed",
                extra={"outage_seconds": round(time.monotonic() - self._down_since, 3)},
            )
            self._down_since = None
            metrics.RATELIMIT_DEGRADED.set(0)
            self._local.clear()
