"""The five event types of the public contract and their priorities."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class EventType(StrEnum):
    """What happened to an email; the ``type`` of an event."""

    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    UNSUBSCRIBED = "unsubscribed"

    @property
    def priority(self) -> Priority:
        """Bounces and unsubscribes jump every queue: customers act on them."""
        if self in (EventType.BOUNCED, EventType.UNSUBSCRIBED):
            return Priority.HIGH
        return Priority.LOW


class Priority(IntEnum):
    """Lower sorts first, so ``ORDER BY priority`` puts high priority in front."""

    HIGH = 0
    LOW = 1
