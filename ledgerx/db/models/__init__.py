"""SQLAlchemy models. Each module holds one domain's tables; the alembic revisions create them."""

from ledgerx.db.models.base import Base
from ledgerx.db.models.identity import AuditLog, RefreshToken, User
from ledgerx.db.models.tenancy import ROLES, ApiKey, Invite, MailOutbox, Project, ProjectMember

__all__ = [
    "ROLES",
    "ApiKey",
    "AuditLog",
    "Base",
    "Invite",
    "MailOutbox",
    "Project",
    "ProjectMember",
    "RefreshToken",
    "User",
]
