"""Loaders for projects, their members and users: a list of N projects costs a constant number of queries."""

from __future__ import annotations

import uuid

from strawberry.dataloader import DataLoader

from ledgerx.context import Context
from ledgerx.dataloaders import loader
from ledgerx.domain.auth.records import UserRecord
from ledgerx.domain.tenancy import members, projects
from ledgerx.domain.tenancy.records import MemberRecord, ProjectRecord


def members_by_project(ctx: Context) -> DataLoader[uuid.UUID, list[MemberRecord]]:
    db = ctx.services.db
    return loader(ctx, "members_by_project", lambda keys: members.members_of(db, keys), default=[])


def users(ctx: Context) -> DataLoader[uuid.UUID, UserRecord | None]:
    db = ctx.services.db
    return loader(ctx, "users", lambda keys: members.users_by_id(db, keys))


def projects_by_id(ctx: Context) -> DataLoader[uuid.UUID, ProjectRecord | None]:
    db = ctx.services.db
    return loader(ctx, "projects", lambda keys: projects.get_many(db, keys))
