"""Auto top-up: `setAutoTopUp` (the settings are read as `Wallet.autoTopUp`)."""

from __future__ import annotations

import strawberry

from ledgerx import ids
from ledgerx.domain.ledger import wallets
from ledgerx.domain.payments import top_ups
from ledgerx.resolvers.guards import authorizer
from ledgerx.schema.info import Info
from ledgerx.schema.top_up import AutoTopUpType, SetAutoTopUpInput


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Turn a wallet's auto top-up on or off (project ADMIN or OWNER; API keys are refused)."
    )
    async def set_auto_top_up(self, info: Info, input: SetAutoTopUpInput) -> AutoTopUpType:
        info.context.require_principal()
        services = info.context.services
        ref = await wallets.find_wallet(
            services.ledger, authorizer(info), ids.decode("wallet", input.wallet_id, "walletId"), top_ups.SET
        )
        saved = await top_ups.set_auto_top_up(
            services.payments,
            info.context.actor(),
            ref.project_id,
            ref.id,
            enabled=input.enabled,
            threshold=int(input.threshold),
            credit_pack_id=ids.decode("credit_pack", input.credit_pack_id, "creditPackId"),
        )
        return AutoTopUpType.of(saved)
