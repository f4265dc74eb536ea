"""The scheduler: claims due deliveries within capacity, records results, renews leases.

It is the dispatcher's only reader and writer of the database (the API only
inserts), and a thin shell: the capacity rules are the pure
:class:`~dispatcher.capacity.CapacityLedger`'s, the statements are
``models.deliveries``' and ``models.endpoints``'. It moves rows between them.

Synchronous and Ray-free: the scheduler actor runs it in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher import logs
from dispatcher.capacity import Capacity, CapacityLedger
from models import counters, deliveries, endpoint_stats, endpoints
from models.jobs import DeliveryStatus, Job, Result

log = logging.getLogger(__name__)


class Scheduler:
    """Moves deliveries between the database and the dispatcher."""

    def __init__(self, engine: Engine, capacity: Capacity, disable_after: timedelta) -> None:
        self.engine = engine
        self.capacity = capacity
        self.disable_after = disable_after
        self.ledger = CapacityLedger(capacity)

    @property
    def in_flight(self) -> int:
        """Deliveries out of the database, as far as this scheduler knows."""
        return self.ledger.in_flight

    @property
    def worth_claiming(self) -> bool:
        """Whether a claim now may find work the last one did not take (see the ledger)."""
        return self.ledger.worth_claiming

    def claim(self, now: datetime) -> list[Job]:
        """Lease the next due deliveries that fit, high priority first."""
        claim = self.ledger.start_claim(now)
        jobs: list[Job] = []
        with Session(self.engine) as session:
            while claim.wanted:
                offered = deliveries.due(
                    session, now=now, limit=claim.wanted, excluding=claim.excluding
                )
                taken = claim.admit(offered)
                # Leased before the next search, which would otherwise find them
                # again (still due) and hand them out twice.
                deliveries.lease(
                    session,
                    [job.delivery_id for job in taken],
                    now=now,
                    until=now + self.capacity.lease,
                )
                jobs.extend(taken)
            session.commit()
        self.ledger.hold(claim, now)
        return jobs

    def record(self, results: Sequence[Result], now: datetime) -> list[str]:
        """Write a batch of results; return the endpoints this disabled."""
        succeeded: set[str] = set()
        failed: set[str] = set()
        gone: set[str] = set()
        for r in results:
            if r.status is DeliveryStatus.SUCCEEDED:
                succeeded.add(r.job.endpoint_id)
            elif r.attempted:
                failed.add(r.job.endpoint_id)
            if r.gone:
                gone.add(r.job.endpoint_id)
        with Session(self.engine) as session:
            moved = deliveries.record(session, results, now=now)
            endpoint_stats.record(session, results, now=now)  # equal to the attempts: one commit
            disabled = endpoints.record_health(
                session,
                succeeded=succeeded,
                failed=failed,
                gone=gone,
                now=now,
                disable_after=self.disable_after,
            )
            # Counted in the transaction that writes the rows: the counters equal them.
            counters.add(session, counters.tally_attempts(results) + counters.tally_finished(moved))
            session.commit()
        self.ledger.record(results, now)
        for endpoint_id in disabled:
            reason = "410 Gone" if endpoint_id in gone else f"failing for {self.disable_after}"
            log.warning(
                "endpoint disabled",
                extra=logs.fields(endpoint_id=endpoint_id, reason=reason),
            )
        return disabled

    def renew(self, held: Sequence[tuple[int, str]], now: datetime) -> None:
        """Extend the leases of deliveries a worker reports it still holds.

        Also re-learns them: after a restart of the scheduler, the workers'
        reports rebuild its count of what is in flight.
        """
        self.ledger.renew(held, now)
        with Session(self.engine) as session:
            deliveries.renew(session, [i for i, _ in held], until=now + self.capacity.lease)
