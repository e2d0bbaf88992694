"""SQLAlchemy models. Each module holds one domain's tables; the alembic revisions create them."""

from ledgerx.db.models.base import Base
from ledgerx.db.models.identity import AuditLog, RefreshToken, User

__all__ = ["AuditLog", "Base", "RefreshToken", "User"]
