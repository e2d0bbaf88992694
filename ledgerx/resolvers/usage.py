"""Usage fields: defineMetric, updateMetric, recordUsage, recordUsageBatch, chargeUsage, usageSummary,
previewUsageCharge and reads.

Authorization (domain/tenancy/access.py):
- defineMetric and updateMetric set prices: project admins (OWNER, ADMIN); API keys are refused.
- recording and charging usage is billable: MEMBER or above, API keys with `usage:write`.
- reads take any role, API keys with `usage:read`.
A project, wallet or metric the caller cannot reach is NOT_FOUND, like one that does not exist.
"""

from __future__ import annotations

import strawberry

from ledgerx import ids
from ledgerx.domain.errors import NotFound
from ledgerx.domain.ledger import WalletRef, wallets
from ledgerx.domain.tenancy.access import Need
from ledgerx.domain.usage import ingest, metrics, policy, pricing, summary
from ledgerx.resolvers.guards import authorizer, project_access
from ledgerx.schema.info import Info
from ledgerx.schema.ledger import TransactionType_
from ledgerx.schema.scalars import Decimal
from ledgerx.schema.usage import (
    ChargeUsageInput,
    DefineMetricInput,
    MetricType,
    PreviewUsageChargeInput,
    RecordUsageBatchInput,
    RecordUsageInput,
    RecordUsagePayload,
    UpdateMetricInput,
    UsageBatchResult,
    UsageCharge,
    UsageChargePreview,
    UsageEventType,
    UsagePointType,
    UsageSummaryInput,
)


async def _wallet(info: Info, public_id: str, field: str = "walletId") -> WalletRef:
    """A wallet the caller may charge usage to; NOT_FOUND for wallets of other projects."""
    info.context.require_principal()
    ledger = info.context.services.ledger
    wallet_id = ids.decode("wallet", public_id, field)
    return await wallets.find_wallet(ledger, authorizer(info), wallet_id, policy.RECORD, field=field)


def _config(info: Info) -> ingest.IngestConfig:
    return ingest.IngestConfig.of(info.context.services.settings)


@strawberry.type
class Query:
    @strawberry.field(description="A project's metrics, by key.")
    async def usage_metrics(self, info: Info, project_id: strawberry.ID) -> list[MetricType]:
        access = await project_access(info, project_id, policy.READ)
        return [MetricType.of(m) for m in await metrics.list_metrics(info.context.services.db, access.project_id)]

    @strawberry.field(description="One metric of a project by its key.")
    async def usage_metric(self, info: Info, project_id: strawberry.ID, key: str) -> MetricType:
        access = await project_access(info, project_id, policy.READ)
        return MetricType.of(await metrics.read_metric(info.context.services.db, access.project_id, key))

    @strawberry.field(
        description="What chargeUsage of these units would post now, at the tiers the wallet's units of the"
        " period reach (a dry run)."
    )
    async def preview_usage_charge(self, info: Info, input: PreviewUsageChargeInput) -> UsageChargePreview:
        info.context.require_principal()
        ledger = info.context.services.ledger
        ref = await wallets.find_wallet(
            ledger, authorizer(info), ids.decode("wallet", input.wallet_id, "walletId"), policy.READ
        )
        db = info.context.services.db
        metric = await metrics.get_metric(db, ref.project_id, input.metric_key)
        return UsageChargePreview.of(await pricing.preview_charge(db, ref, metric, input.units))

    @strawberry.field(description="The usage event stored under an idempotency key, if any.")
    async def usage_event(self, info: Info, project_id: strawberry.ID, idempotency_key: str) -> UsageEventType | None:
        access = await project_access(info, project_id, policy.READ)
        found = await ingest.get_event(info.context.services.db, access.project_id, idempotency_key)
        return UsageEventType.of(found) if found is not None else None

    @strawberry.field(
        description="A metric's usage per bucket (sum, count, max or distinct values, per its aggregation), from"
        " rollups, with buckets aligned in the given time zone. Empty buckets are zeros."
    )
    async def usage_summary(self, info: Info, input: UsageSummaryInput) -> list[UsagePointType]:
        access = await project_access(info, input.project_id, policy.READ)
        db = info.context.services.db
        metric = await metrics.get_metric(db, access.project_id, input.metric_key)
        points = await summary.usage_summary(
            db,
            metric,
            start=input.from_,
            end=input.to,
            granularity=input.granularity.value,
            timezone=input.timezone,
        )
        return [UsagePointType.of(p) for p in points]

    @strawberry.field(
        description="The charge made under an idempotency key (chargeUsage or recordUsage with walletId)."
    )
    async def usage_charge(self, info: Info, project_id: strawberry.ID, idempotency_key: str) -> UsageCharge | None:
        access = await project_access(info, project_id, policy.READ)
        ctx = info.context
        found = await pricing.get_charge(ctx.services.db, access.project_id, idempotency_key)
        if found is None:
            return None
        return UsageCharge.of(found, await pricing.transaction_of(ctx.services.ledger, found), False)

    @strawberry.field(description="The fraction of a credit owed by a wallet for a metric, not yet debited.")
    async def usage_remainder(self, info: Info, wallet_id: strawberry.ID, metric_key: str) -> Decimal:
        info.context.require_principal()
        ledger = info.context.services.ledger
        wallet_uuid = ids.decode("wallet", wallet_id, "walletId")
        ref = await wallets.find_wallet(ledger, authorizer(info), wallet_uuid, policy.READ)
        db = info.context.services.db
        metric = await metrics.get_metric(db, ref.project_id, metric_key)
        return await pricing.remainder(db, ref.project_id, ref.id, metric.id)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Define a metric of the project (project admins); its key is unique.")
    async def define_metric(self, info: Info, input: DefineMetricInput) -> MetricType:
        access = await project_access(info, input.project_id, Need.ADMIN, write=True)
        m = await metrics.define_metric(
            info.context.services.db,
            info.context.actor(),
            access.project_id,
            key=input.key,
            name=input.name,
            aggregation=input.aggregation.value,
            unit_price=input.unit_price,
            unique_property=input.unique_property,
            pricing=input.pricing.to_domain() if input.pricing is not None else None,
        )
        return MetricType.of(m)

    @strawberry.mutation(
        description="Rename a metric, or reprice it (project admins): a new price applies from the next period;"
        " the running period keeps the price it started with."
    )
    async def update_metric(self, info: Info, input: UpdateMetricInput) -> MetricType:
        access = await project_access(info, input.project_id, Need.ADMIN, write=True)
        m = await metrics.update_metric(
            info.context.services.db,
            info.context.actor(),
            access.project_id,
            input.key,
            name=input.name,
            unit_price=input.unit_price,
            pricing=input.pricing.to_domain() if input.pricing is not None else None,
        )
        return MetricType.of(m)

    @strawberry.mutation(
        description="Record one usage event, once per idempotency key; with walletId also charge it, in the same"
        " transaction (both or neither)."
    )
    async def record_usage(self, info: Info, input: RecordUsageInput) -> RecordUsagePayload:
        access = await project_access(info, input.project_id, policy.RECORD)
        wallet = await _wallet(info, input.wallet_id) if input.wallet_id is not None else None
        if wallet is not None and wallet.project_id != access.project_id:
            raise NotFound("wallet not found", field="walletId")
        ctx = info.context
        event = {
            "metricKey": input.metric_key,
            "units": input.units,
            "idempotencyKey": input.idempotency_key,
            "occurredAt": input.occurred_at,
            "properties": input.properties,
        }
        result = await ingest.record_usage(
            ctx.services.db,
            ctx.services.ledger,
            ctx.actor(),
            access.project_id,
            {k: v for k, v in event.items() if v is not None},
            _config(info),
            wallet=wallet,
            bus=ctx.services.events,
            quotas=ctx.services.quotas,
        )
        return RecordUsagePayload.of(result)

    @strawberry.mutation(
        description="Record many events: bad ones are rejected alone (with their index), duplicates counted."
    )
    async def record_usage_batch(self, info: Info, input: RecordUsageBatchInput) -> UsageBatchResult:
        access = await project_access(info, input.project_id, policy.RECORD)
        events = [e.wire() for e in input.events]
        svc = info.context.services
        result = await ingest.record_batch(
            svc.db, access.project_id, events, _config(info), bus=svc.events, quotas=svc.quotas
        )
        return UsageBatchResult.of(result)

    @strawberry.mutation(
        description="Price units of a metric at the tiers the wallet's units of the period (UTC month) reach, add"
        " the remainder carried for this wallet and metric, and debit the whole credits through the ledger (a VOLUME"
        " tier crossing credits back); the fraction is carried to the next charge. Idempotent:"
        " the same key returns the same transaction. Null when less than one whole credit was due (the fraction"
        " was carried: see usageCharge and usageRemainder)."
    )
    async def charge_usage(self, info: Info, input: ChargeUsageInput) -> TransactionType_ | None:
        ctx = info.context
        wallet = await _wallet(info, input.wallet_id)
        metric = await metrics.get_metric(ctx.services.db, wallet.project_id, input.metric_key)
        result = await pricing.charge_usage(
            ctx.services.db, ctx.services.ledger, ctx.actor(), wallet, metric, input.units, input.idempotency_key
        )
        return TransactionType_.of(result.transaction) if result.transaction is not None else None
