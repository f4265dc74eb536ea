"""What ``/metrics`` reads from the database at a scrape: the backlog, disabled endpoints, age.

Each is one indexed query, cheap whatever the size of the tables, but the
backlog's count, which reads as many index entries as deliveries are due
(``api/metrics.py`` reads less often when that grows slow):

- the backlog per priority: deliveries due now and not claimed (pending and
  due, or leased and expired: what the next claim would take), and the due
  time of the oldest, from the partial index ``ix_delivery_open``;
- endpoints disabled, from the partial index ``ix_endpoint_disabled``;
- the oldest event's acceptance time, from ``ix_event_created``: how far
  back the data goes, which retention keeps near its setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlmodel import Session, col

from models.deliveries import OPEN_CLAUSE, Delivery
from models.endpoints import DISABLED, Endpoint
from models.event_types import Priority
from models.events import Event


@dataclass(frozen=True)
class Backlog:
    """Deliveries of one priority due now and not claimed, and when the oldest became due."""

    due: int
    oldest_due_at: datetime | None


@dataclass(frozen=True)
class Gauges:
    """One scrape's readings of the database."""

    backlog: dict[Priority, Backlog]
    endpoints_disabled: int
    oldest_event_at: datetime | None


def read(session: Session, now: datetime) -> Gauges:
    """The gauges as of ``now``."""
    backlog = {}
    for priority in Priority:
        due = (OPEN_CLAUSE, col(Delivery.priority) == int(priority), col(Delivery.due_at) <= now)
        count = session.execute(select(func.count()).select_from(Delivery).where(*due))
        oldest = session.execute(
            select(col(Delivery.due_at)).where(*due).order_by(col(Delivery.due_at)).limit(1)
        )
        backlog[priority] = Backlog(int(count.scalar_one()), oldest.scalar_one_or_none())
    disabled = session.execute(select(func.count()).select_from(Endpoint).where(DISABLED))
    oldest_event = session.execute(select(func.min(col(Event.created_at))))
    return Gauges(backlog, int(disabled.scalar_one()), oldest_event.scalar_one_or_none())
