"""Jobs and results: the values the dispatcher moves, and the statuses of a delivery.

A :class:`Job` is a claimed delivery with everything needed to attempt it; a
:class:`Result` is how it left the dispatcher. Both are plain, picklable and
batched: they cross Ray several times each. This module imports no database
code, so that lanes and delivery workers load none.
"""

from __future__ import annotations

import copyreg
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from operator import attrgetter
from typing import Any, TypeVar

_T = TypeVar("_T")


class DeliveryStatus(StrEnum):
    """Where a delivery stands."""

    PENDING = "pending"
    DELIVERING = "delivering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed delivery with everything needed to attempt it."""

    delivery_id: int
    event_id: str
    endpoint_id: str
    url: str
    origin: str
    secret: str
    rate_limit: float | None
    priority: int
    attempts: int
    body: bytes
    previous_secret: str | None = None
    """The secret before a rotation, while its grace period lasts: it signs too."""
    headers: tuple[tuple[str, str], ...] = ()
    """The endpoint's custom headers, sent with every attempt."""


@dataclass(frozen=True, slots=True)
class Result:
    """How a job left the dispatcher: settled, rescheduled, or handed back unattempted.

    ``status`` is the delivery's new status; ``due_at`` is set when it is
    ``pending`` again. ``attempted`` is False when the job was only released
    (a parked or blocked lane, a forgotten endpoint): no attempt is recorded
    or counted.
    """

    job: Job
    status: DeliveryStatus
    due_at: datetime | None
    attempted: bool = True
    at: datetime | None = None
    status_code: int | None = None
    error: str | None = None
    duration_ms: int = 0
    gone: bool = False
    blocked: bool = False
    """Handed back because its host takes nothing now (breaker open, every slot stuck)."""
    response_body: str | None = None
    """The first KiB of the receiver's answer as text (invalid UTF-8 replaced); None if none."""


# Jobs and results cross Ray in batches, several times each. Pickled by default, a
# slotted dataclass is rebuilt from a state list, one setattr per field; as a call
# of the class with its field values it costs half as much to load.
def _by_fields(cls: type[_T]) -> Callable[[_T], tuple[type[_T], tuple[Any, ...]]]:
    values = attrgetter(*(f.name for f in fields(cls)))  # type: ignore[arg-type]

    def reduce(obj: _T) -> tuple[type[_T], tuple[Any, ...]]:
        return cls, values(obj)

    return reduce


copyreg.pickle(Job, _by_fields(Job))
copyreg.pickle(Result, _by_fields(Result))
