"""Billing rules, their runs and previews, manual runs and test clocks.

Authorization is billing's rule (`domain/billing/policy.py`). A rule, wallet or run of a project
the caller cannot reach is NOT_FOUND, exactly like one that does not exist.
"""

from __future__ import annotations

import uuid

import asyncpg
import strawberry

from ledgerx import ids
from ledgerx.domain.billing import clocks, preview, rules, store
from ledgerx.domain.billing.policy import READ, WRITE
from ledgerx.domain.billing.records import Rule
from ledgerx.domain.errors import NotFound
from ledgerx.domain.ledger import WalletRef, wallets
from ledgerx.domain.pagination import decode_cursor, page_size
from ledgerx.domain.tenancy.access import Access
from ledgerx.resolvers.guards import authorizer
from ledgerx.schema.billing import (
    AdvanceTestClockInput,
    BillingPreviewItemType,
    BillingRuleType,
    BillingRunType,
    CreateBillingRuleInput,
    TestClockType,
    UpdateBillingRuleInput,
    create_fields,
    update_fields,
)
from ledgerx.schema.info import Info
from ledgerx.schema.pagination import Connection, connection


async def _access(info: Info, project_id: uuid.UUID, *, write: bool, what: str, field: str) -> Access:
    info.context.require_principal()
    return await authorizer(info).require_for(project_id, WRITE if write else READ, what=what, field=field)


async def _rule(info: Info, public_id: str, *, write: bool, field: str = "id") -> tuple[Access, uuid.UUID]:
    info.context.require_principal()
    rule_id = ids.decode("rule", public_id, field)
    project_id = await store.rule_project(info.context.services.db, rule_id)
    if project_id is None:
        raise NotFound("billing rule not found", field=field)
    return await _access(info, project_id, write=write, what="billing rule", field=field), rule_id


async def _wallet(info: Info, public_id: str, *, write: bool, field: str = "walletId") -> WalletRef:
    info.context.require_principal()
    ledger, rule = info.context.services.ledger, WRITE if write else READ
    return await wallets.find_wallet(
        ledger, authorizer(info), ids.decode("wallet", public_id, field), rule, field=field
    )


async def _project(info: Info, public_id: str, *, write: bool, field: str = "projectId") -> Access:
    info.context.require_principal()
    return await _access(info, ids.decode("project", public_id, field), write=write, what="project", field=field)


@strawberry.type
class Query:
    @strawberry.field
    async def billing_rule(self, info: Info, id: strawberry.ID) -> BillingRuleType:
        access, rule_id = await _rule(info, id, write=False)
        return BillingRuleType.of(await store.get_rule(info.context.services.db, access.project_id, rule_id))

    @strawberry.field(description="A project's billing rules (optionally one wallet's), oldest first.")
    async def billing_rules(
        self,
        info: Info,
        project_id: strawberry.ID,
        wallet_id: strawberry.ID | None = None,
        first: int | None = 20,
        after: str | None = None,
    ) -> Connection[BillingRuleType]:
        access = await _project(info, project_id, write=False)
        wallet_uuid = ids.decode("wallet", wallet_id, "walletId") if wallet_id is not None else None
        limit = page_size(first)
        found = await store.list_rules(
            info.context.services.db, access.project_id, limit=limit, after=decode_cursor(after), wallet_id=wallet_uuid
        )
        return connection(found, limit, lambda x: x.id, BillingRuleType.of)

    @strawberry.field
    async def billing_run(self, info: Info, id: strawberry.ID) -> BillingRunType:
        info.context.require_principal()
        run_id = ids.decode("run", id, "id")
        project_id = await store.run_project(info.context.services.db, run_id)
        if project_id is None:
            raise NotFound("billing run not found", field="id")
        access = await _access(info, project_id, write=False, what="billing run", field="id")
        return BillingRunType.of(await store.get_run(info.context.services.db, access.project_id, run_id))

    @strawberry.field(
        description="The rule's next `count` run instants (UTC and local) with what each would charge now."
        " A dry run: writes nothing."
    )
    async def preview_billing_rule(
        self, info: Info, id: strawberry.ID, count: int = 10
    ) -> list[BillingPreviewItemType]:
        access, rule_id = await _rule(info, id, write=False)
        rule, _, items = await preview.preview(info.context.services.billing, access.project_id, rule_id, count)
        return [BillingPreviewItemType.of(rule, x) for x in items]

    @strawberry.field(
        description="The preview a new rule would have, before it is created: the same checks and"
        " schedule as createBillingRule, nothing written (project admins; the console's live preview)."
    )
    async def preview_billing_rule_draft(
        self, info: Info, input: CreateBillingRuleInput, count: int = 10
    ) -> list[BillingPreviewItemType]:
        ref = await _wallet(info, input.wallet_id, write=True)
        ctx = info.context

        async def draft(conn: asyncpg.Connection) -> Rule:
            return await rules.create_in(
                conn,
                ctx.services.billing,
                ctx.actor(),
                project_id=ref.project_id,
                wallet_id=ref.id,
                currency=ref.currency,
                fields=create_fields(input),
            )

        rule, _, items = await preview.preview_draft(ctx.services.billing, ref.project_id, count, draft)
        return [BillingPreviewItemType.of(rule, x) for x in items]

    @strawberry.field(
        description="The preview a rule would have with these changes, before they are saved: the same"
        " checks as updateBillingRule, nothing written (project admins; the console's live preview)."
    )
    async def preview_billing_rule_change(
        self, info: Info, input: UpdateBillingRuleInput, count: int = 10
    ) -> list[BillingPreviewItemType]:
        access, rule_id = await _rule(info, input.id, write=True)
        ctx = info.context

        async def draft(conn: asyncpg.Connection) -> Rule:
            return await rules.update_in(
                conn, ctx.services.billing, ctx.actor(), access.project_id, rule_id, update_fields(input)
            )

        rule, _, items = await preview.preview_draft(ctx.services.billing, access.project_id, count, draft)
        return [BillingPreviewItemType.of(rule, x) for x in items]

    @strawberry.field(description="A test-mode project's clock.")
    async def test_clock(self, info: Info, project_id: strawberry.ID) -> TestClockType:
        access = await _project(info, project_id, write=False)
        c = await clocks.get_clock(info.context.services.billing, access.project_id)
        return TestClockType(project_id=strawberry.ID(ids.encode("project", c.project_id)), now=c.now, runs_executed=0)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="A rule that charges a wallet on a schedule (project admins).")
    async def create_billing_rule(self, info: Info, input: CreateBillingRuleInput) -> BillingRuleType:
        ref = await _wallet(info, input.wallet_id, write=True)
        rule = await rules.create_rule(
            info.context.services.billing,
            info.context.actor(),
            project_id=ref.project_id,
            wallet_id=ref.id,
            currency=ref.currency,
            fields=create_fields(input),
        )
        return BillingRuleType.of(rule)

    @strawberry.mutation(description="Change a rule; a new schedule applies from its first instant after now.")
    async def update_billing_rule(self, info: Info, input: UpdateBillingRuleInput) -> BillingRuleType:
        access, rule_id = await _rule(info, input.id, write=True)
        rule = await rules.update_rule(
            info.context.services.billing, info.context.actor(), access.project_id, rule_id, update_fields(input)
        )
        return BillingRuleType.of(rule)

    @strawberry.mutation
    async def pause_billing_rule(self, info: Info, id: strawberry.ID) -> BillingRuleType:
        access, rule_id = await _rule(info, id, write=True)
        rule = await rules.pause_rule(info.context.services.billing, info.context.actor(), access.project_id, rule_id)
        return BillingRuleType.of(rule)

    @strawberry.mutation(description="Resume from now; unpaid runs are retried at once.")
    async def resume_billing_rule(self, info: Info, id: strawberry.ID) -> BillingRuleType:
        access, rule_id = await _rule(info, id, write=True)
        rule = await rules.resume_rule(info.context.services.billing, info.context.actor(), access.project_id, rule_id)
        return BillingRuleType.of(rule)

    @strawberry.mutation(
        description="Run now: retry unpaid runs if any, else what is due, else the next period early. Returns the run."
    )
    async def run_billing_rule(self, info: Info, id: strawberry.ID) -> BillingRunType:
        access, rule_id = await _rule(info, id, write=True)
        run = await rules.run_rule_now(info.context.services.billing, info.context.actor(), access.project_id, rule_id)
        return BillingRunType.of(run)

    @strawberry.mutation(
        description="Move a test-mode project's clock forward, running its due rules and retries on the way, in order."
    )
    async def advance_test_clock(self, info: Info, input: AdvanceTestClockInput) -> TestClockType:
        access = await _project(info, input.project_id, write=True)
        c = await clocks.advance(info.context.services.billing, info.context.actor(), access.project_id, input.to)
        return TestClockType(
            project_id=strawberry.ID(ids.encode("project", c.project_id)), now=c.now, runs_executed=c.runs_executed
        )
