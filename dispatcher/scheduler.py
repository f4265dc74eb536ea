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
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher import logs
from dispatcher.capacity import Capacity, CapacityLedger
from models import counters, deliveries, endpoint_stats, endpoints, events
from models.event_types import EventType
from models.events import EndpointNotice
from models.jobs import DeliveryStatus, Job, Result

log = logging.getLogger(__name__)


class Scheduler:
    """Moves deliveries between the database and the dispatcher."""

    def __init__(
        self,
        engine: Engine,
        capacity: Capacity,
        disable_after: timedelta,
        failing_after: timedelta = timedelta(hours=1),
    ) -> None:
        self.engine = engine
        self.capacity = capacity
        self.disable_after = disable_after
        self.failing_after = failing_after
        self.ledger = CapacityLedger(capacity)
        self.announced = 0
        """Deliveries of operational events the last :meth:`record` made (0: none to claim)."""

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
        """Write a batch of results; return the endpoints this disabled.

        In the same transaction, endpoints disabled now, and endpoints whose
        run of failures has just lasted ``failing_after``, are announced to
        their account's other endpoints (``endpoint.disabled``, ``endpoint.failing``).
        """
        succeeded: set[str] = set()
        failed: set[str] = set()
        gone: set[str] = set()
        last_errors: dict[str, Result] = {}
        for r in results:
            if r.status is DeliveryStatus.SUCCEEDED:
                succeeded.add(r.job.endpoint_id)
            elif r.attempted:
                failed.add(r.job.endpoint_id)
                known = last_errors.get(r.job.endpoint_id)
                if known is None or (r.at or now) >= (known.at or now):
                    last_errors[r.job.endpoint_id] = r
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
            failing = endpoints.mark_failing(
                session, failed - succeeded, now=now, failing_after=self.failing_after
            )
            self.announced = self._announce(session, disabled, failing, last_errors, now)
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

    def _announce(
        self,
        session: Session,
        disabled: list[str],
        failing: list[str],
        last_errors: dict[str, Result],
        now: datetime,
    ) -> int:
        """Store the operational events of these endpoints; how many deliveries they made."""
        if not (disabled or failing):
            return 0
        described = endpoints.describe(session, [*disabled, *failing])
        notices: list[EndpointNotice] = []
        for kind, ids in (
            (EventType.ENDPOINT_DISABLED, disabled),
            (EventType.ENDPOINT_FAILING, failing),
        ):
            for endpoint_id in ids:
                account_id, url, disabled_reason = described[endpoint_id]
                if kind is EventType.ENDPOINT_DISABLED:
                    reason = disabled_reason or "disabled by the service"
                else:
                    reason = f"no successful delivery for {self.failing_after} while attempts fail"
                    log.warning("endpoint failing", extra=logs.fields(endpoint_id=endpoint_id))
                notices.append(
                    EndpointNotice(
                        kind, endpoint_id, account_id, url, reason,
                        _last_error(last_errors.get(endpoint_id), now),
                    )
                )  # fmt: skip
        return events.emit(session, notices, now=now)

    def renew(self, held: Sequence[tuple[int, str]], now: datetime) -> None:
        """Extend the leases of deliveries a worker reports it still holds.

        Also re-learns them: after a restart of the scheduler, the workers'
        reports rebuild its count of what is in flight.
        """
        self.ledger.renew(held, now)
        with Session(self.engine) as session:
            deliveries.renew(session, [i for i, _ in held], until=now + self.capacity.lease)


def _last_error(result: Result | None, now: datetime) -> dict[str, Any] | None:
    """The ``last_error`` of an operational event: the attempt that told, as the payload has it."""
    if result is None:
        return None
    at = (result.at or now).astimezone(UTC)
    return {
        "at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "status_code": result.status_code,
        "error": result.error[:500] if result.error else None,
    }
