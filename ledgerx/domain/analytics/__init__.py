"""Analytics: project and platform revenue figures, and the live feeds behind `liveMetrics` and
`liveRevenue` (definitions in docs/analytics.md).

- `project.project_analytics`, `revenue.revenue_analytics`: the queries;
- `live.project_live`, `revenue.revenue_live`: the live snapshots;
- `service.LiveAnalytics` (`services.live`): per-instance feeds with coalescing and fan-out; the
  event-bus topics they listen to are named in `ledgerx.domain.topics`.
"""

from ledgerx.domain.analytics.periods import Granularity
from ledgerx.domain.analytics.service import LiveAnalytics

__all__ = ["Granularity", "LiveAnalytics"]
