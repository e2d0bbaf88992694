"""Plain HTTP routes beside GraphQL (bulk usage ingestion, …)."""
