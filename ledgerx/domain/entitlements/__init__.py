"""Entitlements: what a project's plan lets it use (features.py), per-project overrides
(overrides.py), and the checks answered from a per-instance cache (checks.py)."""
