"""Tenancy: projects, members and roles, invitations, API keys, suspension, access rules."""
