"""Notifications (migration 0010): a project's billing details and which notification kinds it
turned off. One row per project at most; a project without a row has no billing details and
every kind on. The mails themselves are `MailOutbox` rows (with an occurrence key)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import ARRAY, ForeignKey, Text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from ledgerx.db.models.base import Base, ts_now


class BillingDetails(Base):
    __tablename__ = "billing_details"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    email: Mapped[str | None] = mapped_column(Text)
    legal_name: Mapped[str | None] = mapped_column(Text)
    address_line1: Mapped[str | None] = mapped_column(Text)
    address_line2: Mapped[str | None] = mapped_column(Text)
    address_city: Mapped[str | None] = mapped_column(Text)
    address_postal_code: Mapped[str | None] = mapped_column(Text)
    address_state: Mapped[str | None] = mapped_column(Text)
    address_country: Mapped[str | None] = mapped_column(Text)
    tax_ids: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False, default=list)
    updated_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class NotificationSettings(Base):
    __tablename__ = "notification_settings"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    disabled: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, default=list)
    updated_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    updated_at: Mapped[dt.datetime] = ts_now()
