"""Ledger fields: wallets, transactions, postings, refunds, verification and live updates.

Authorization: reads take any role in the wallet's project (API keys: `wallets:read`); creating
wallets and moving money take ADMIN or OWNER (API keys: `wallets:write`). A wallet or
transaction of a project the caller cannot reach is NOT_FOUND, exactly like one that does not exist.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator

import strawberry

from ledgerx import ids
from ledgerx.domain.errors import BadInput, NotFound
from ledgerx.domain.ledger import (
    Posted,
    WalletRef,
    bulk,
    feed,
    grants,
    policy,
    posting,
    reads,
    refunds,
    wallet_feed,
    wallets,
)
from ledgerx.domain.ledger.types import GrantCategory
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.domain.pagination import decode_cursor, page_size
from ledgerx.domain.tenancy.access import Need
from ledgerx.resolvers.guards import authorizer, project_access
from ledgerx.resolvers.streams import guarded, member_guard
from ledgerx.schema.bulk import BulkOperationResult, PostTransactionsInput, PostTransactionsResult
from ledgerx.schema.grants import CreditGrantType, GrantCreditsInput, VoidCreditGrantInput
from ledgerx.schema.info import Info
from ledgerx.schema.ledger import (
    CreateWalletInput,
    CreditWalletInput,
    DebitWalletInput,
    LedgerVerification,
    RefundTransactionInput,
    TransactionType_,
    TransferCreditsInput,
    WalletType,
    WalletUpdate,
    as_dict,
)
from ledgerx.schema.pagination import Connection, connection


async def _wallet(info: Info, public_id: str, *, write: bool, field: str = "walletId") -> WalletRef:
    info.context.require_principal()
    rule = policy.WRITE if write else policy.READ
    ledger = info.context.services.ledger
    return await wallets.find_wallet(
        ledger, authorizer(info), ids.decode("wallet", public_id, field), rule, field=field
    )


async def _transaction_project(info: Info, public_id: str, *, write: bool, field: str) -> tuple[uuid.UUID, uuid.UUID]:
    info.context.require_principal()
    txn_id = ids.decode("transaction", public_id, field)
    project_id = await info.context.services.ledger.transaction_project(txn_id)
    rule = policy.WRITE if write else policy.READ
    await authorizer(info).require_for(project_id, rule, what="transaction", field=field)
    assert project_id is not None
    return project_id, txn_id


def _txn(p: Posted) -> TransactionType_:
    return TransactionType_.of(p.transaction)


@strawberry.type
class Query:
    @strawberry.field
    async def wallet(self, info: Info, id: strawberry.ID) -> WalletType:
        ref = await _wallet(info, id, write=False, field="id")
        found = await reads.get_wallet(info.context.services.ledger, ref.project_id, ref.id)
        if found is None:
            raise NotFound("wallet not found", field="id")
        return WalletType.of(found)

    @strawberry.field(description="The project's wallets, oldest first.")
    async def wallets(
        self, info: Info, project_id: strawberry.ID, first: int | None = 20, after: str | None = None
    ) -> Connection[WalletType]:
        access = await project_access(info, project_id, policy.READ)
        limit = page_size(first)
        rows = await reads.list_wallets(
            info.context.services.ledger, access.project_id, limit=limit, after=decode_cursor(after)
        )
        return connection(rows, limit, lambda w: w.id, WalletType.of)

    @strawberry.field
    async def transaction(self, info: Info, id: strawberry.ID) -> TransactionType_:
        project_id, txn_id = await _transaction_project(info, id, write=False, field="id")
        found = await reads.get_transaction(info.context.services.ledger, project_id, txn_id)
        if found is None:
            raise NotFound("transaction not found", field="id")
        return TransactionType_.of(found)

    @strawberry.field(description="Recompute balances, chains and sums from the entries (project admins).")
    async def verify_ledger(self, info: Info, project_id: strawberry.ID) -> LedgerVerification:
        access = await project_access(info, project_id, Need.ADMIN, write=False)
        return LedgerVerification.of(await verify_ledger(info.context.services.ledger, access.project_id))


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def create_wallet(self, info: Info, input: CreateWalletInput) -> WalletType:
        access = await project_access(info, input.project_id, policy.WRITE)
        owner = ids.decode("user", input.owner_user_id, "ownerUserId") if input.owner_user_id else None
        w = await wallets.create_wallet(
            info.context.services.ledger,
            info.context.actor(),
            access.project_id,
            name=input.name,
            owner_user_id=owner,
            currency=input.currency,
            credit_limit=0 if input.credit_limit is None else input.credit_limit,
            low_balance_threshold=input.low_balance_threshold,
        )
        return WalletType.of(w)

    @strawberry.mutation(description="Add money to a wallet from the project's external funding account.")
    async def credit_wallet(self, info: Info, input: CreditWalletInput) -> TransactionType_:
        ref = await _wallet(info, input.wallet_id, write=True)
        ctx = info.context
        return _txn(
            await posting.credit_wallet(
                ctx.services.ledger,
                ctx.actor(),
                ref,
                input.amount,
                input.idempotency_key,
                reason=input.reason,
                metadata=as_dict(input.metadata),
                reference=input.reference,
            )
        )

    @strawberry.mutation(description="Take money out of a wallet; INSUFFICIENT_FUNDS past its credit limit.")
    async def debit_wallet(self, info: Info, input: DebitWalletInput) -> TransactionType_:
        ref = await _wallet(info, input.wallet_id, write=True)
        ctx = info.context
        return _txn(
            await posting.debit_wallet(
                ctx.services.ledger,
                ctx.actor(),
                ref,
                input.amount,
                input.idempotency_key,
                reason=input.reason,
                metadata=as_dict(input.metadata),
                reference=input.reference,
            )
        )

    @strawberry.mutation(description="Move money between two wallets of one project and currency.")
    async def transfer_credits(self, info: Info, input: TransferCreditsInput) -> TransactionType_:
        source = await _wallet(info, input.from_wallet_id, write=True, field="fromWalletId")
        target = await _wallet(info, input.to_wallet_id, write=False, field="toWalletId")
        if target.project_id != source.project_id:
            raise BadInput("both wallets must belong to one project", field="toWalletId")
        ctx = info.context
        return _txn(
            await posting.transfer_credits(
                ctx.services.ledger,
                ctx.actor(),
                source,
                target,
                input.amount,
                input.idempotency_key,
                reason=input.reason,
                metadata=as_dict(input.metadata),
            )
        )

    @strawberry.mutation(
        description="Many credits, debits and transfers in one request: each operation's result in order;"
        " atomic (all or nothing) or independent (default). Idempotent per operation."
    )
    async def post_transactions(self, info: Info, input: PostTransactionsInput) -> PostTransactionsResult:
        ctx = info.context
        ctx.require_principal()
        results = await bulk.post_operations(
            ctx.services.ledger,
            ctx.actor(),
            authorizer(info),
            [op.domain() for op in input.operations],
            atomic=input.atomic,
            max_batch=ctx.services.settings.ledger_max_batch,
        )
        return PostTransactionsResult(results=[BulkOperationResult.of(r) for r in results])

    @strawberry.mutation(description="Reverse all or part of a transaction; never more than it in total.")
    async def refund_transaction(self, info: Info, input: RefundTransactionInput) -> TransactionType_:
        project_id, txn_id = await _transaction_project(info, input.transaction_id, write=True, field="transactionId")
        ctx = info.context
        return _txn(
            await refunds.refund_transaction(
                ctx.services.ledger,
                ctx.actor(),
                project_id,
                txn_id,
                input.amount,
                input.idempotency_key,
                reason=input.reason,
            )
        )

    @strawberry.mutation(description="Credits into a wallet as a grant with its own terms (PROMOTIONAL by default).")
    async def grant_credits(self, info: Info, input: GrantCreditsInput) -> CreditGrantType:
        ref = await _wallet(info, input.wallet_id, write=True)
        ctx = info.context
        return CreditGrantType.of(
            await grants.grant_credits(
                ctx.services.ledger,
                ctx.actor(),
                ref,
                input.amount,
                input.idempotency_key,
                category=GrantCategory(input.category.value),
                priority=input.priority,
                expires_at=input.expires_at,
                reason=input.reason,
                metadata=as_dict(input.metadata),
            )
        )

    @strawberry.mutation(description="End a grant now: what remains of it leaves the wallet (CONFLICT if nothing).")
    async def void_credit_grant(self, info: Info, input: VoidCreditGrantInput) -> CreditGrantType:
        info.context.require_principal()
        grant_id = ids.decode("credit_grant", input.id, "id")
        ctx = info.context
        project_id = await grants.grant_project(ctx.services.ledger, grant_id)
        await authorizer(info).require_for(project_id, policy.WRITE, what="credit grant", field="id")
        assert project_id is not None
        return CreditGrantType.of(
            await grants.void_grant(ctx.services.ledger, ctx.actor(), project_id, grant_id, input.idempotency_key)
        )


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Every transaction that changes the wallet, after it commits, each once, in the wallet's"
        " order. With `after` (a transaction's cursor) it first replays what followed that transaction;"
        " without it, it starts now. Ends when the caller loses access to the wallet's project or the"
        " token expires."
    )
    async def wallet_updated(
        self, info: Info, wallet_id: strawberry.ID, after: strawberry.ID | None = None
    ) -> AsyncGenerator[WalletUpdate, None]:
        ref = await _wallet(info, wallet_id, write=False)
        ledger = info.context.services.ledger
        after_seq = None
        if after is not None:
            txn_id = ids.decode("transaction", after, "after")
            after_seq = await wallet_feed.cursor_seq(ledger, ref.project_id, ref.id, txn_id)
        guard = member_guard(info, ref.project_id, policy.READ)
        updates = wallet_feed.wallet_updates(ledger, ref.project_id, ref.id, after_seq)
        async for update in guarded(info.context.services, updates, ref.project_id, guard):
            yield WalletUpdate.of(update)

    @strawberry.subscription(
        description="Every transaction posted in the project, after it commits, each once, in one order"
        " (the same for every subscriber). With `after` (a transaction's cursor) it first replays what"
        " followed that transaction; without it, it starts now. Ends when the caller loses access to the"
        " project or the token expires."
    )
    async def transaction_posted(
        self, info: Info, project_id: strawberry.ID, after: strawberry.ID | None = None
    ) -> AsyncGenerator[TransactionType_, None]:
        access = await project_access(info, project_id, policy.READ)
        ledger = info.context.services.ledger
        position = None
        if after is not None:
            txn_id = ids.decode("transaction", after, "after")
            position = await feed.cursor_position(ledger.db, access.project_id, txn_id)
        guard = member_guard(info, access.project_id, policy.READ)
        posted = ledger.feeds.transactions(access.project_id, position)
        async for item in guarded(info.context.services, posted, access.project_id, guard):
            yield TransactionType_.of(item.transaction)
