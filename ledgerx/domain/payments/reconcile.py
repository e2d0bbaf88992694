"""Reconciliation: compare Stripe's recent events and completed checkouts with LedgerX's books.

1. Every Stripe event since `since` missing from the inbox is stored (source RECONCILE) and
   processed now; events in the inbox that are not done (FAILED, DEAD, PENDING) are reported.
2. Every completed, paid credit-pack checkout since `since` without a Payment is processed from
   the session itself (a synthetic `checkout.session.completed`); the ledger key is the session's,
   so a webhook arriving later cannot credit it again. What still has no Payment is reported.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import select

from ledgerx.db.models import Payment
from ledgerx.domain.payments import event_json, inbox, objects
from ledgerx.domain.payments.service import PaymentsService


@dataclasses.dataclass(slots=True)
class Report:
    since: dt.datetime
    events_seen: int = 0
    events_recovered: list[str] = dataclasses.field(default_factory=list)
    events_outstanding: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    sessions_checked: int = 0
    sessions_recovered: list[str] = dataclasses.field(default_factory=list)
    unmatched: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.events_outstanding and not self.unmatched

    def lines(self) -> list[str]:
        out = [
            f"since {self.since.isoformat()}: {self.events_seen} Stripe events, {self.sessions_checked} paid checkouts",
            f"recovered {len(self.events_recovered)} missing events"
            f" and {len(self.sessions_recovered)} unrecorded payments",
        ]
        out += [f"  recovered event {e}" for e in self.events_recovered]
        out += [f"  recovered checkout {s}" for s in self.sessions_recovered]
        for e in self.events_outstanding:
            out.append(f"  not processed: {e['id']} {e['type']} {e['status']} {e.get('error') or ''}".rstrip())
        for u in self.unmatched:
            out.append(f"  no LedgerX payment: {u['id']} ({u['reason']})")
        out.append("clean" if self.clean else "needs attention")
        return out


async def _process_now(svc: PaymentsService, event_id: Any) -> str:
    row = await inbox.claim_one(svc, event_id)
    done = await inbox.process(svc, row, trigger="RECONCILE")
    return done.status


async def reconcile(svc: PaymentsService, since: dt.datetime) -> Report:
    stripe = svc.require_stripe()
    report = Report(since)
    async for event in stripe.list_events(objects.unix(since)):
        report.events_seen += 1
        try:
            stored = await inbox.store(svc, event, source="RECONCILE")
        except event_json.Refused as exc:
            report.events_outstanding.append(
                {
                    "id": str(event.get("id"))[:80],
                    "type": str(event.get("type"))[:80],
                    "status": "REFUSED",
                    "error": exc.reason,
                }
            )
            continue
        row = stored.event
        if stored.created and row.status == "PENDING":
            status = await _process_now(svc, row.id)
            report.events_recovered.append(row.stripe_event_id)
            if status in ("FAILED", "DEAD"):
                report.events_outstanding.append({"id": row.stripe_event_id, "type": row.type, "status": status})
        elif row.status in ("PENDING", "FAILED", "DEAD", "PROCESSING"):
            report.events_outstanding.append(
                {"id": row.stripe_event_id, "type": row.type, "status": row.status, "error": row.last_error}
            )
    async for session in stripe.list_checkout_sessions(objects.unix(since)):
        meta = objects.metadata(session)
        if session.get("mode") != "payment" or session.get("payment_status") != "paid":
            continue
        if objects.META_PROJECT not in meta:
            continue
        report.sessions_checked += 1
        session_id = str(session["id"])
        if await _has_payment(svc, session_id):
            continue
        synthetic = {
            "id": f"reconcile:{session_id}",
            "object": "event",
            "type": "checkout.session.completed",
            "created": session.get("created") or objects.unix(svc.now()),
            "livemode": bool(session.get("livemode")),
            "data": {"object": session},
        }
        stored = await inbox.store(svc, synthetic, source="RECONCILE")
        if stored.event.status != "PROCESSED":
            await _process_now(svc, stored.event.id)
        if await _has_payment(svc, session_id):
            report.sessions_recovered.append(session_id)
        else:
            report.unmatched.append({"id": session_id, "reason": "processing did not record a payment"})
    return report


async def _has_payment(svc: PaymentsService, session_id: str) -> bool:
    async with svc.db.transaction(system=True) as s:
        return (await s.scalar(select(Payment.id).where(Payment.stripe_checkout_session_id == session_id))) is not None
