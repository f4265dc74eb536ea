"""The dispatcher's capacity rules: how much work may be out of the database at once.

Capacity is what keeps memory bounded and hosts apart: at most
``max_in_flight`` deliveries are out of the database at once, and no origin
holds more than ``max_in_flight_per_host`` of them, so a slow host cannot take
the capacity of the others, and a high-priority event for a busy host waits
behind at most that many (its lane then puts it first).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dispatcher.settings import Settings


@dataclass(frozen=True)
class Capacity:
    """How much work may be out of the database at once."""

    max_in_flight: int = 20_000
    max_in_flight_per_host: int = 1_000
    claim_batch: int = 1_000
    lease: timedelta = timedelta(seconds=60)
    max_in_flight_unproven_host: int = 64
    """What a host may hold until one of its deliveries succeeds, and again once
    its work came back unattempted: enough to keep its slots busy until its
    first success is known (four times their number, by default), not enough
    to hold the others up."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Capacity:
        """What the scheduler may hold out of the database, as the operator set it."""
        return cls(
            max_in_flight=settings.max_in_flight,
            max_in_flight_per_host=settings.max_in_flight_per_host,
            max_in_flight_unproven_host=4 * settings.host_concurrency,
            lease=timedelta(seconds=settings.lease_seconds),
        )
