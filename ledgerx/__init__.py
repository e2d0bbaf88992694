"""LedgerX: a monetization backend behind one GraphQL API."""

__version__ = "0.1.0"
