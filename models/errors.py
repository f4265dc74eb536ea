"""Domain errors raised by the data layer; the API maps them to HTTP in one place.

DomainError
 ├── NotFound          the resource does not exist for this account
 └── InvalidInput      a field is well-formed but not acceptable here
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
