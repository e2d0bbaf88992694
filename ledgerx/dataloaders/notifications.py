"""Loaders for `Project.billingDetails` and `Project.notificationSettings` (one statement per list
of projects)."""

from __future__ import annotations

import uuid

from strawberry.dataloader import DataLoader

from ledgerx.context import Context
from ledgerx.dataloaders import loader
from ledgerx.domain.notifications import billing_details, preferences
from ledgerx.domain.notifications.records import BillingDetailsRecord, SettingsRecord


def billing_details_of(ctx: Context) -> DataLoader[uuid.UUID, BillingDetailsRecord]:
    db = ctx.services.db
    return loader(ctx, "billing_details", lambda keys: billing_details.get_many(db, keys))


def notification_settings_of(ctx: Context) -> DataLoader[uuid.UUID, SettingsRecord]:
    db = ctx.services.db
    return loader(ctx, "notification_settings", lambda keys: preferences.get_many(db, keys))
