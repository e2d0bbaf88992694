"""Database models, engine and tenant-scoped transactions."""
