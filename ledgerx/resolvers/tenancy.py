"""Tenancy fields (define `Query`, `Mutation`, `Subscription` classes here)."""
