"""The event types: the five email types of the public contract, the two operational ones,
and their priorities."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class EventType(StrEnum):
    """What an event is about; the ``type`` of an event, and what endpoints subscribe to."""

    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    UNSUBSCRIBED = "unsubscribed"
    ENDPOINT_FAILING = "endpoint.failing"
    """Another endpoint of the account has failed without a success for a while."""
    ENDPOINT_DISABLED = "endpoint.disabled"
    """The service disabled another endpoint of the account (410 Gone, or failing too long)."""

    @property
    def priority(self) -> Priority:
        """Bounces, unsubscribes and word of a failing endpoint jump every queue:
        customers act on them."""
        if self in (EventType.DELIVERED, EventType.OPENED, EventType.CLICKED):
            return Priority.LOW
        return Priority.HIGH

    @property
    def operational(self) -> bool:
        """Whether only the service emits this type (it is about an endpoint, not an email)."""
        return self in (EventType.ENDPOINT_FAILING, EventType.ENDPOINT_DISABLED)


class EmailEventType(StrEnum):
    """The types the email platform may post: what happened to an email.

    The operational types are not among them: only the service emits those, and
    posting one is refused as any unknown type is.
    """

    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    UNSUBSCRIBED = "unsubscribed"


class Priority(IntEnum):
    """Lower sorts first, so ``ORDER BY priority`` puts high priority in front."""

    HIGH = 0
    LOW = 1
