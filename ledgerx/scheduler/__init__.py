"""Background loops that several instances share: the lease that picks the driver, and the
billing scheduler that executes due rules (`ledgerx scheduler`, or inside `ledgerx serve`)."""

from ledgerx.scheduler.lease import Lease
from ledgerx.scheduler.loop import Scheduler, TickStats

__all__ = ["Lease", "Scheduler", "TickStats"]
