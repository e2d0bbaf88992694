"""The delivery worker: sends the outbox's due deliveries, signed, and records every attempt.

Claiming. A round claims due deliveries (`PENDING`, `next_attempt_at <= now()`) in one short
transaction with `FOR UPDATE SKIP LOCKED`, and in the same statement counts the attempt and pushes
`next_attempt_at` past a lease (`lease`: 2 x timeout + 5 s). Several workers (instances) never claim
one attempt twice. A worker renews the leases of the rows it holds (every third of a lease, in its
rounds), so a live worker's rows never come back to another one however long they wait; a worker
that dies (killed, crashed) leaves its rows to come back once their lease runs out (at-least-once:
the receiver may see a delivery twice, always with the same `webhook-id`).

Sending. Claimed deliveries go to their endpoint's lane: at most `per_endpoint` requests in flight
per endpoint (the rest wait in the lane, in order), at most `max_in_flight` rows held by this worker,
and the claim skips endpoints whose lane is full. So a slow or dead endpoint fills only its own lane
while every other endpoint's deliveries are claimed and sent as they come due; an endpoint with a
backlog takes a claim's worth into its lane at once, and is skipped until that has drained. Each
attempt is one POST with the Standard Webhooks headers (signing.py) over a kept-alive connection
(connections.py; an event's body is built once for all its endpoints, each signs it), bounded by
`timeout` as a whole; a 2xx answer within it succeeds; anything else (another status, a timeout, a
refused connection, an address the SSRF guard refuses, a redirect) is a failed attempt.

Recording. A round is one short transaction: it writes the outcomes gathered since the previous
round, in batches, then claims. Written are each delivery's status (a failed attempt is retried
after the next of `retry_delays`, with jitter; after the last it is FAILED), one
`webhook_delivery_attempts` row per attempt, and the endpoint's health: the first failure since its
last success sets `failing_since`; an endpoint failing for `disable_after` is disabled (with an
audit row, a mail to its project's owner and admins, its pending deliveries failed, and
`on_disabled` called after commit).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from ledgerx import jsonenc
from ledgerx.background import PollingWorker
from ledgerx.db.engine import Database
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.webhooks import notices, signing
from ledgerx.domain.webhooks.connections import ConnectError, Pool, RemoteProtocolError
from ledgerx.ids import encode, uuid7
from ledgerx.settings import Settings

log = logging.getLogger("ledgerx.webhooks.delivery")

USER_AGENT = "LedgerX-Webhooks/1"


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    retry_delays: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    timeout: float = 10.0
    disable_after: float = 5 * 86400
    allow_private: bool = False
    poll_interval: float = 0.25
    batch_size: int = 200
    max_in_flight: int = 512
    per_endpoint: int = 16
    # Bytes of an answer read (then the connection is dropped rather than drained).
    max_response_bytes: int = 64 * 1024

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays) + 1

    @property
    def lease(self) -> float:
        """How long a claimed row stays claimed without its worker renewing it: an attempt ends
        within `timeout` and its outcome is written by the next round, and the worker renews every
        third of a lease, so twice the timeout and 5 s more; a dead worker's rows come back that
        soon."""
        return 2 * self.timeout + 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            retry_delays=tuple(float(d) for d in settings.outbound_webhook_retry_delays),
            timeout=settings.outbound_webhook_timeout,
            disable_after=float(settings.outbound_webhook_disable_after),
            allow_private=settings.outbound_webhook_allow_private,
            poll_interval=settings.outbound_webhook_poll_interval,
        )

    def retry_delay(self, attempt: int) -> float:
        """Seconds before the next attempt after failed attempt number `attempt` (1-based), jittered."""
        return self.retry_delays[attempt - 1] * random.uniform(0.8, 1.2)


@dataclasses.dataclass(frozen=True, slots=True)
class DisabledEndpoint:
    project_id: uuid.UUID
    endpoint_id: uuid.UUID
    url: str
    failing_since: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class _Job:
    delivery_id: uuid.UUID
    project_id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    attempt: int
    url: str
    usable: bool  # enabled and not deleted
    secrets: tuple[bytes, ...]
    body: bytes  # the same bytes on every attempt (built once per event, see `body_of`)


@dataclasses.dataclass
class _Lane:
    running: int = 0
    waiting: collections.deque[_Job] = dataclasses.field(default_factory=collections.deque)

    @property
    def held(self) -> int:
        return self.running + len(self.waiting)


@dataclasses.dataclass(frozen=True, slots=True)
class _Outcome:
    job: _Job
    status_code: int | None
    error: str | None
    duration_ms: int
    at: float  # epoch seconds when the attempt ended
    sent: bool  # False: nothing was sent (endpoint disabled or deleted meanwhile)

    @property
    def ok(self) -> bool:
        return self.sent and self.error is None


_CLAIM = """
WITH due AS (
  SELECT id FROM webhook_deliveries
   WHERE status = 'PENDING' AND next_attempt_at <= now() AND NOT (endpoint_id = ANY($2::uuid[]))
   ORDER BY next_attempt_at
   LIMIT $1
   FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
   SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $3)
  FROM due, webhook_endpoints e, webhook_outbox o
 WHERE d.id = due.id AND e.id = d.endpoint_id AND o.id = d.event_id
RETURNING d.id, d.project_id, d.endpoint_id, d.event_id, d.attempts, e.url,
          e.enabled AND e.deleted_at IS NULL AS usable, e.secret,
          CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END AS previous_secret,
          o.type, o.payload::text AS payload, o.created_at
"""
# The rows a worker holds stay claimed (`attempts` tells the holder of the current attempt).
_RENEW = """
UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $3)
  FROM unnest($1::uuid[], $2::int[]) AS u(id, attempt)
 WHERE d.id = u.id AND d.attempts = u.attempt AND d.status = 'PENDING'
"""
# A round's transaction does not wait for its commit to reach the disk: losing the last moments of
# claims and outcomes to a database crash only means those deliveries are sent again (at least once;
# a lost attempt-log row), and it saves a WAL flush per round. Transactions that disable an endpoint
# (an audit row, a mail) turn it back on. A queue's statistics are always stale (the due rows are a
# moving window): without bitmap scans the head of the queue is read in index order up to the LIMIT,
# whatever the estimates say, instead of reading every due row to sort them.
_ROUND_SETTINGS = "SET LOCAL synchronous_commit = off; SET LOCAL enable_bitmapscan = off"
# Only the holder of the current attempt writes its outcome (`attempts = u.attempt`): a worker
# whose lease ran out cannot overwrite the attempt another worker has since made.
_SUCCEEDED = """
UPDATE webhook_deliveries d
   SET status = 'SUCCEEDED', delivered_at = to_timestamp(u.at), last_status_code = u.code, last_error = NULL,
       next_attempt_at = to_timestamp(u.at)
  FROM unnest($1::uuid[], $2::int[], $3::int[], $4::float8[]) AS u(id, attempt, code, at)
 WHERE d.id = u.id AND d.attempts = u.attempt
"""
_FAILED = """
UPDATE webhook_deliveries d
   SET status = CASE WHEN u.final THEN 'FAILED' ELSE 'PENDING' END,
       last_status_code = u.code, last_error = u.error,
       next_attempt_at = to_timestamp(u.at) + make_interval(secs => u.delay)
  FROM unnest($1::uuid[], $2::int[], $3::int[], $4::text[], $5::bool[], $6::float8[], $7::float8[])
       AS u(id, attempt, code, error, final, delay, at)
 WHERE d.id = u.id AND d.attempts = u.attempt AND d.status = 'PENDING'
"""
# Nothing was sent: the attempt the claim counted is given back.
_SKIPPED = """
UPDATE webhook_deliveries SET status = 'FAILED', attempts = attempts - 1,
       last_error = 'endpoint disabled or deleted before the attempt'
 WHERE id = ANY($1::uuid[]) AND status = 'PENDING'
"""
_ATTEMPTS = """
INSERT INTO webhook_delivery_attempts (id, project_id, delivery_id, attempt, status_code, error, duration_ms, at)
SELECT u.id, u.project_id, u.delivery_id, u.attempt, u.code, u.error, u.ms, to_timestamp(u.at)
  FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::int[], $5::text[], $6::int[], $7::float8[], $8::uuid[])
       AS u(project_id, delivery_id, attempt, code, error, ms, at, id)
"""
_HEALTHY = "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = ANY($1::uuid[]) AND failing_since IS NOT NULL"
_FAILING = """
UPDATE webhook_endpoints e SET failing_since = to_timestamp(u.at)
  FROM unnest($1::uuid[], $2::float8[]) AS u(id, at)
 WHERE e.id = u.id AND e.failing_since IS NULL
"""
_DISABLE = """
UPDATE webhook_endpoints
   SET enabled = false, updated_at = now(),
       disabled_reason = 'failing since ' || to_char(failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                         || ' (every attempt failed for ' || $2::text || ')'
 WHERE id = ANY($1::uuid[]) AND enabled AND deleted_at IS NULL
   AND failing_since <= now() - make_interval(secs => $3)
RETURNING id, project_id, url, failing_since
"""
_FAIL_PENDING = """
UPDATE webhook_deliveries SET status = 'FAILED', last_error = 'endpoint disabled'
 WHERE endpoint_id = ANY($1::uuid[]) AND status = 'PENDING'
"""


def describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:1000]


def human_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def body_of(
    event_id: uuid.UUID, project_id: uuid.UUID, event_type: str, created_at: dt.datetime, payload: str
) -> bytes:
    """The JSON body: `data` is the outbox payload as stored (the same bytes on every attempt)."""
    head = {
        "id": encode("event", event_id),
        "type": event_type,
        "createdAt": created_at.astimezone(dt.UTC).isoformat(),
        "projectId": encode("project", project_id),
    }
    return (jsonenc.dumps(head)[:-1] + ',"data":' + payload + "}").encode()


def make_pool(policy: DeliveryPolicy) -> Pool:
    return Pool(allow_private=policy.allow_private, user_agent=USER_AGENT, max_idle_per_origin=policy.max_in_flight)


OnDisabled = Callable[[Sequence[DisabledEndpoint]], Awaitable[None]]


class DeliveryWorker(PollingWorker):
    """The background loop that delivers outbound webhooks (one per worker instance)."""

    task_name = "ledgerx-webhook-delivery"

    def __init__(
        self,
        db: Database,
        policy: DeliveryPolicy,
        *,
        pool: Pool | None = None,
        on_disabled: OnDisabled | None = None,
    ) -> None:
        super().__init__(log)
        self.db = db
        self.policy = policy
        self.on_disabled = on_disabled
        self._given_pool = pool
        self._pool: Pool | None = pool
        self._lanes: dict[uuid.UUID, _Lane] = {}
        self._held = 0
        self._leased: dict[uuid.UUID, tuple[int, float]] = {}  # delivery -> (attempt, lease taken at)
        self._tasks: set[asyncio.Task[None]] = set()
        self._outcomes: list[_Outcome] = []
        self._flush_lock = asyncio.Lock()

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = make_pool(self.policy)
        return self._pool

    @property
    def in_flight(self) -> int:
        return self._held

    def _idle_wait(self) -> float:
        return self.policy.poll_interval

    async def _round(self) -> tuple[bool, float]:
        if self._pool is not None:
            self._pool.sweep()
        asked, claimed = await self._record_and_claim(claim=True)
        return asked > 0 and claimed == asked, self.policy.poll_interval

    async def run_once(self) -> int:
        """Claim what is due now, send it all, record the outcomes; how many were claimed."""
        _, claimed = await self._record_and_claim(claim=True)
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        await self.flush()
        return claimed

    async def stop(self) -> None:
        await super().stop()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=self.STOP_GRACE)
            for task in pending:
                task.cancel()  # its row comes back when its lease runs out
            if pending:
                await asyncio.wait(pending)
        try:
            await self.flush()
        except Exception:
            log.exception("webhook delivery: recording the last outcomes failed (they will be retried)")
        for lane in self._lanes.values():  # never started: their rows come back when the lease runs out
            self._held -= len(lane.waiting)
            lane.waiting.clear()
        self._lanes.clear()
        self._leased.clear()
        if self._pool is not None and self._given_pool is None:
            await self._pool.aclose()
            self._pool = None

    # -- one round: record, claim, dispatch ------------------------------------------------------

    async def flush(self) -> None:
        """Write the outcomes gathered since the last round (one transaction)."""
        await self._record_and_claim(claim=False)

    async def _record_and_claim(self, *, claim: bool) -> tuple[int, int]:
        """One transaction: the outcomes gathered since the last one are written, the leases of
        held rows renewed when a third of a lease has passed, then (`claim`) due deliveries are
        claimed for the lanes that are not full (a batch at most) and sent once it commits.
        (asked, claimed)."""
        p = self.policy
        async with self._flush_lock:
            outcomes, self._outcomes = self._outcomes, []
            asked = min(p.batch_size, p.max_in_flight - self._held) if claim else 0
            now = time.monotonic()
            renew = [(d, a) for d, (a, at) in self._leased.items() if now - at > p.lease / 3]
            if not outcomes and not renew and asked <= 0:
                return 0, 0
            full = [ep for ep, lane in self._lanes.items() if lane.held >= p.per_endpoint]
            disabled: list[DisabledEndpoint] = []
            rows: list[Any] = []
            try:
                async with self.db.raw(system=True) as conn:
                    await conn.execute(_ROUND_SETTINGS)
                    if outcomes:
                        disabled = await self._record(conn, outcomes)
                    if renew:
                        await conn.execute(_RENEW, [d for d, _ in renew], [a for _, a in renew], p.lease)
                    if asked > 0:
                        rows = await conn.fetch(_CLAIM, asked, full, p.lease)
            except BaseException:
                self._outcomes[:0] = outcomes  # keep them for the next round
                raise
        for d, a in renew:
            if d in self._leased:
                self._leased[d] = (a, now)
        self._dispatch_all(rows)
        await self._after_record(outcomes, disabled)
        return asked, len(rows)

    def _dispatch_all(self, rows: list[Any]) -> None:
        bodies: dict[uuid.UUID, bytes] = {}  # an event's body is the same for each of its endpoints
        for r in rows:
            secrets = (r["secret"],) if r["previous_secret"] is None else (r["secret"], r["previous_secret"])
            body = bodies.get(r["event_id"])
            if body is None:
                body = bodies[r["event_id"]] = body_of(
                    r["event_id"], r["project_id"], r["type"], r["created_at"], r["payload"]
                )
            self._dispatch(
                _Job(
                    r["id"],
                    r["project_id"],
                    r["endpoint_id"],
                    r["event_id"],
                    r["attempts"],
                    r["url"],
                    r["usable"],
                    secrets,
                    body,
                )
            )

    def _dispatch(self, job: _Job) -> None:
        lane = self._lanes.setdefault(job.endpoint_id, _Lane())
        self._held += 1
        self._leased[job.delivery_id] = (job.attempt, time.monotonic())
        if lane.running < self.policy.per_endpoint:
            self._start(lane, job)
        else:
            lane.waiting.append(job)

    def _start(self, lane: _Lane, job: _Job) -> None:
        lane.running += 1
        task = asyncio.create_task(self._attempt(job), name=f"webhook-{job.delivery_id}")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, lane, job))

    def _finished(self, task: asyncio.Task[None], lane: _Lane, job: _Job) -> None:
        self._tasks.discard(task)
        self._leased.pop(job.delivery_id, None)
        lane.running -= 1
        self._held -= 1
        if lane.waiting and not self._stopping:
            self._start(lane, lane.waiting.popleft())
        elif lane.held == 0:
            self._lanes.pop(job.endpoint_id, None)
        # A round (a transaction) is worth it when this lane can be claimed for again or half a
        # claim's worth of room is free, not after every answer.
        p = self.policy
        if lane.held == p.per_endpoint - 1 or self._held == max(0, p.max_in_flight - max(1, p.batch_size // 2)):
            self.wake()

    # -- one attempt ----------------------------------------------------------------------------

    async def _attempt(self, job: _Job) -> None:
        if not job.usable:
            self._outcomes.append(_Outcome(job, None, "endpoint disabled", 0, time.time(), sent=False))
            return
        started = time.perf_counter()
        code, error = await self.send(job)
        ms = int((time.perf_counter() - started) * 1000)
        self._outcomes.append(_Outcome(job, code, error, ms, time.time(), sent=True))

    async def send(self, job: _Job) -> tuple[int | None, str | None]:
        """(status code, error) of one POST; error is None exactly for a 2xx within the timeout."""
        p = self.policy
        signed = signing.headers(encode("event", job.event_id), int(time.time()), job.body, job.secrets)
        headers = [(k.encode(), v.encode()) for k, v in signed.items()]
        headers.append((b"content-type", b"application/json"))
        try:
            async with asyncio.timeout(p.timeout):
                code = await self.pool.post(job.url, headers, job.body, max_response_bytes=p.max_response_bytes)
        except TimeoutError:
            return None, f"timed out after {p.timeout:g}s"
        except ConnectError as exc:
            return None, describe(exc)
        except RemoteProtocolError as exc:
            return exc.status, describe(exc)
        except Exception as exc:  # a bug here must not stop the worker: the attempt failed
            log.exception("webhook delivery %s: unexpected error", job.delivery_id)
            return None, describe(exc)
        if 200 <= code < 300:
            return code, None
        return code, f"HTTP {code}"

    # -- recording --------------------------------------------------------------------------------

    async def _after_record(self, outcomes: list[_Outcome], disabled: list[DisabledEndpoint]) -> None:
        for o in outcomes:
            if not o.ok and o.sent:
                log.info(
                    "webhook delivery %s to %s failed (attempt %d): %s",
                    encode("webhook_delivery", o.job.delivery_id),
                    o.job.url,
                    o.job.attempt,
                    o.error,
                )
        for d in disabled:
            log.warning(
                "webhook endpoint %s (%s) disabled: failing since %s",
                encode("webhook_endpoint", d.endpoint_id),
                d.url,
                d.failing_since.isoformat(),
            )
        if disabled and self.on_disabled is not None:
            try:
                await self.on_disabled(disabled)
            except Exception:
                log.exception("webhook delivery: on_disabled failed")

    async def _record(self, conn: asyncpg.Connection, outcomes: list[_Outcome]) -> list[DisabledEndpoint]:
        p = self.policy
        ok = [o for o in outcomes if o.ok]
        failed = [o for o in outcomes if o.sent and not o.ok]
        skipped = [o.job.delivery_id for o in outcomes if not o.sent]
        # Each endpoint's health follows its latest outcome in this batch.
        latest: dict[uuid.UUID, _Outcome] = {}
        for o in outcomes:
            if o.sent:
                latest[o.job.endpoint_id] = o
        first_failure: dict[uuid.UUID, float] = {}
        for o in failed:
            first_failure.setdefault(o.job.endpoint_id, o.at)
        # In one order (by id), so two workers updating the same endpoints cannot deadlock.
        healthy = sorted(ep for ep, o in latest.items() if o.ok)
        failing = sorted(ep for ep, o in latest.items() if not o.ok)
        disabled: list[DisabledEndpoint] = []
        if ok:
            await conn.execute(
                _SUCCEEDED,
                [o.job.delivery_id for o in ok],
                [o.job.attempt for o in ok],
                [o.status_code for o in ok],
                [o.at for o in ok],
            )
        if failed:
            finals = [o.job.attempt >= p.max_attempts for o in failed]
            await conn.execute(
                _FAILED,
                [o.job.delivery_id for o in failed],
                [o.job.attempt for o in failed],
                [o.status_code for o in failed],
                [o.error for o in failed],
                finals,
                [0.0 if final else p.retry_delay(o.job.attempt) for o, final in zip(failed, finals, strict=True)],
                [o.at for o in failed],
            )
        if skipped:
            await conn.execute(_SKIPPED, skipped)
        sent = [o for o in outcomes if o.sent]
        if sent:
            await conn.execute(
                _ATTEMPTS,
                [o.job.project_id for o in sent],
                [o.job.delivery_id for o in sent],
                [o.job.attempt for o in sent],
                [o.status_code for o in sent],
                [o.error for o in sent],
                [o.duration_ms for o in sent],
                [o.at for o in sent],
                [uuid7() for _ in sent],
            )
        if healthy:
            await conn.execute(_HEALTHY, healthy)
        if failing:
            await conn.execute(_FAILING, failing, [first_failure.get(ep, time.time()) for ep in failing])
            rows = await conn.fetch(_DISABLE, failing, human_duration(p.disable_after), p.disable_after)
            if rows:
                await conn.execute("SET LOCAL synchronous_commit = on")  # an audit row and a mail: durable
                disabled = [DisabledEndpoint(r["project_id"], r["id"], r["url"], r["failing_since"]) for r in rows]
                await conn.execute(_FAIL_PENDING, [d.endpoint_id for d in disabled])
                await audit.record_many(
                    conn,
                    [
                        audit.Entry(
                            Actor.system(),
                            "webhook_endpoint.disable",
                            project_id=d.project_id,
                            target_type="webhook_endpoint",
                            target_id=encode("webhook_endpoint", d.endpoint_id),
                            after=_disabled_after(d, p.disable_after),
                        )
                        for d in disabled
                    ],
                )
                for d in disabled:  # the project's admins are mailed, in this transaction
                    await notices.endpoint_disabled(
                        conn, d.project_id, d.endpoint_id, d.url, d.failing_since, human_duration(p.disable_after)
                    )
        return disabled


def _disabled_after(d: DisabledEndpoint, disable_after: float) -> dict[str, Any]:
    return {"enabled": False, "failingSince": d.failing_since.isoformat(), "disableAfterSeconds": disable_after}
