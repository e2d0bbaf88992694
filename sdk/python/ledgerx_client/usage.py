"""`client.usage.ingest(events)`: usage events over `POST /v1/usage`, in batches, with back-pressure.

- Batches of `batch_size` events (the server takes at most `USAGE_MAX_BATCH`, 10,000 by default;
  a batch the server finds too large (413 `BATCH_TOO_LARGE`) is split in two and sent again).
- At most `max_in_flight` batches are in flight; events are read from the iterable only as
  batches are sent, so a generator of any length is fine.
- A 429 (or 503) pauses every sender until its `Retry-After` has passed, then the same batch is
  sent again. Every event has an idempotency key (made up when missing, returned in
  `IngestResult.idempotency_keys`), so a batch sent twice is recorded once.
- The answer adds up the server's: `accepted`, `duplicates`, `overage`, and each rejected event
  with its index in the events given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from ledgerx_client._base import Answer, new_idempotency_key
from ledgerx_client._generated.types import JSON, DateTimeInput, DecimalInput

if TYPE_CHECKING:
    from ledgerx_client._base import AsyncBaseClient, SyncBaseClient

DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 10_000
DEFAULT_IN_FLIGHT = 4
MAX_THROTTLED_WAITS = 100  # per batch


class IngestEvent(TypedDict):
    metricKey: str
    units: DecimalInput
    idempotencyKey: NotRequired[str]
    occurredAt: NotRequired[DateTimeInput]
    properties: NotRequired[JSON]


@dataclasses.dataclass(frozen=True)
class Rejection:
    """An event the server refused; `index` is its position in the events given."""

    index: int
    idempotency_key: str
    code: str
    message: str
    field: str | None = None
    reason: str | None = None


@dataclasses.dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    overage: int = 0
    rejected: list[Rejection] = dataclasses.field(default_factory=list)
    idempotency_keys: list[str] = dataclasses.field(default_factory=list)
    batches: int = 0  # requests that were answered 200
    throttled: int = 0  # 429/503 answers waited out

    def _add(self, offset: int, batch: list[dict[str, Any]], body: Mapping[str, Any]) -> None:
        self.batches += 1
        self.accepted += int(body.get("accepted", 0))
        self.duplicates += int(body.get("duplicates", 0))
        self.overage += int(body.get("overage", 0))
        for r in body.get("rejected") or ():
            i = int(r["index"])
            self.rejected.append(
                Rejection(
                    offset + i,
                    str(batch[i]["idempotencyKey"]),
                    str(r.get("code")),
                    str(r.get("message")),
                    r.get("field"),
                    r.get("reason"),
                )
            )


def _keyed(event: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(event)
    if not out.get("idempotencyKey"):
        out["idempotencyKey"] = new_idempotency_key()
    return out


def _check(batch_size: int, max_in_flight: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be within 1..{MAX_BATCH_SIZE}")
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")


def _too_large(answer: Answer) -> bool:
    err = answer.body.get("error") if isinstance(answer.body, Mapping) else None
    return answer.status == 413 and isinstance(err, Mapping) and err.get("reason") == "BATCH_TOO_LARGE"


def _body(batch: list[dict[str, Any]], project_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"events": batch}
    if project_id is not None:
        body["projectId"] = project_id
    return body


class _Pause:
    """The instant before which no batch is sent (moved by a 429's Retry-After)."""

    def __init__(self) -> None:
        self.until = 0.0

    def extend(self, answer: Answer, waits: int, backoff: float) -> None:
        delay = answer.retry_after if answer.retry_after is not None else min(8.0, backoff * 2.0 ** min(waits, 5))
        self.until = max(self.until, time.monotonic() + delay)


class Usage:
    """Usage ingestion for the blocking client (`client.usage`)."""

    def __init__(self, client: SyncBaseClient) -> None:
        self._client = client

    def ingest(
        self,
        events: Iterable[IngestEvent],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_in_flight: int = DEFAULT_IN_FLIGHT,
        project_id: str | None = None,
    ) -> IngestResult:
        """Record `events` (an API key records for its project; a signed-in user names `project_id`)."""
        _check(batch_size, max_in_flight)
        result = IngestResult()
        pause = _Pause()
        lock = threading.Lock()

        def send(offset: int, batch: list[dict[str, Any]]) -> None:
            waits = 0
            while True:
                delay = pause.until - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                answer = self._client._post("/v1/usage", _body(batch, project_id), idempotent=True, retry_status=False)
                if answer.retryable() and waits < MAX_THROTTLED_WAITS:
                    waits += 1
                    with lock:
                        result.throttled += 1
                        pause.extend(answer, waits, self._client._config.retry.backoff)
                    continue
                if _too_large(answer) and len(batch) > 1:
                    half = len(batch) // 2
                    send(offset, batch[:half])
                    send(offset + half, batch[half:])
                    return
                if answer.status != 200 or not isinstance(answer.body, Mapping):
                    raise answer.error()
                with lock:
                    result._add(offset, batch, answer.body)
                return

        with ThreadPoolExecutor(max_in_flight, thread_name_prefix="ledgerx-usage") as pool:
            pending: set[Future[None]] = set()
            try:
                for offset, batch in _batches(events, batch_size, result):
                    while len(pending) >= max_in_flight:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in done:
                            f.result()
                    pending.add(pool.submit(send, offset, batch))
                for f in pending:
                    f.result()
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
        result.rejected.sort(key=lambda r: r.index)
        return result


class AsyncUsage:
    """Usage ingestion for the asyncio client (`client.usage`)."""

    def __init__(self, client: AsyncBaseClient) -> None:
        self._client = client

    async def ingest(
        self,
        events: Iterable[IngestEvent] | AsyncIterable[IngestEvent],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_in_flight: int = DEFAULT_IN_FLIGHT,
        project_id: str | None = None,
    ) -> IngestResult:
        """Record `events` (an API key records for its project; a signed-in user names `project_id`)."""
        _check(batch_size, max_in_flight)
        result = IngestResult()
        pause = _Pause()
        slots = asyncio.Semaphore(max_in_flight)

        async def send(offset: int, batch: list[dict[str, Any]]) -> None:
            waits = 0
            while True:
                delay = pause.until - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                answer = await self._client._post(
                    "/v1/usage", _body(batch, project_id), idempotent=True, retry_status=False
                )
                if answer.retryable() and waits < MAX_THROTTLED_WAITS:
                    waits += 1
                    result.throttled += 1
                    pause.extend(answer, waits, self._client._config.retry.backoff)
                    continue
                if _too_large(answer) and len(batch) > 1:
                    half = len(batch) // 2
                    await send(offset, batch[:half])
                    await send(offset + half, batch[half:])
                    return
                if answer.status != 200 or not isinstance(answer.body, Mapping):
                    raise answer.error()
                result._add(offset, batch, answer.body)
                return

        async def run(offset: int, batch: list[dict[str, Any]]) -> None:
            try:
                await send(offset, batch)
            finally:
                slots.release()

        tasks: list[asyncio.Task[None]] = []
        try:
            async for offset, batch in _abatches(events, batch_size, result):
                await slots.acquire()
                failed = [t for t in tasks if t.done() and t.exception() is not None]
                if failed:
                    slots.release()
                    failed[0].result()
                tasks.append(asyncio.create_task(run(offset, batch)))
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        result.rejected.sort(key=lambda r: r.index)
        return result


def _batches(
    events: Iterable[IngestEvent], batch_size: int, result: IngestResult
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    batch: list[dict[str, Any]] = []
    offset = 0
    for event in events:
        keyed = _keyed(event)
        result.idempotency_keys.append(keyed["idempotencyKey"])
        batch.append(keyed)
        if len(batch) == batch_size:
            yield offset, batch
            offset += len(batch)
            batch = []
    if batch:
        yield offset, batch


async def _abatches(
    events: Iterable[IngestEvent] | AsyncIterable[IngestEvent], batch_size: int, result: IngestResult
) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    if isinstance(events, AsyncIterable):
        batch: list[dict[str, Any]] = []
        offset = 0
        async for event in events:
            keyed = _keyed(event)
            result.idempotency_keys.append(keyed["idempotencyKey"])
            batch.append(keyed)
            if len(batch) == batch_size:
                yield offset, batch
                offset += len(batch)
                batch = []
        if batch:
            yield offset, batch
    else:
        for item in _batches(events, batch_size, result):
            yield item


__all__ = ["AsyncUsage", "IngestEvent", "IngestResult", "Rejection", "Usage"]
