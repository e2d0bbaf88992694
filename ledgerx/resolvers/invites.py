"""Invites fields (define `Query`, `Mutation`, `Subscription` classes here)."""
