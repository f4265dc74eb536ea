"""Domain errors raised by the data layer; the API maps them to HTTP in one place.

DomainError
 ├── NotFound          the resource does not exist for this account
 ├── InvalidInput      a field is well-formed but not acceptable here
 ├── Conflict          the resource's state does not allow the operation now
 ├── TooMany           the caller asks too often; it may ask again later
 └── Unavailable       the database did not commit; the caller should retry
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the data layer raises on purpose."""


class NotFound(DomainError):
    """The resource does not exist, or belongs to another account (never revealed)."""

    def __init__(self, resource: str, id: str) -> None:
        super().__init__(f"{resource} {id!r} not found")
        self.resource = resource
        self.id = id


class InvalidInput(DomainError):
    """A field's value is refused; ``loc`` names it as request validation would."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {message}")
        self.loc = loc
        self.message = message


class Conflict(DomainError):
    """The operation does not fit the resource's state now; ``reason`` says what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TooMany(DomainError):
    """Too many calls of this kind lately; ``retry_after`` seconds until the next is taken."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Unavailable(DomainError):
    """The database failed to commit a request's writes; retrying is safe.

    Whether they were stored is unknown (a commit can fail after it took
    effect): a retried event that was stored comes back as a duplicate.
    """

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
