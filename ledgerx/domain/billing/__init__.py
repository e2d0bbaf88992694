"""Billing rules: schedules, pricing of a period, execution by the scheduler."""
