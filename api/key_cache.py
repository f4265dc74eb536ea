"""API keys already looked up, remembered for a few seconds: most requests cost no lookup.

Authenticating a request (a SHA-256 of the key and an indexed read, on a
thread because the driver blocks) cost about a third of a single-event
ingestion's CPU. The cache maps a key's hash to its account, or to ``None``
(no live key), for ``ttl`` seconds counted from the moment the lookup
*began*: a key revoked at time R is refused by every API process from
R + ``ttl`` at the latest, whatever each has cached. ``ttl`` is
``SENTINMAIL_KEY_CACHE_SECONDS`` (2 s by default, at most 5; 0 turns the
cache off). At most ``max_entries`` keys are remembered (random keys sent by
a stranger cannot grow it): the oldest entry goes first.

Pure: the time is passed in; the lookup itself is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Literal

from models.accounts import Account


class Missing(Enum):
    """What :meth:`KeyCache.get` returns for a key it does not know (or no longer trusts)."""

    KEY = "missing"


MISSING: Final = Missing.KEY


@dataclass
class KeyCache:
    """Key hash -> (when its lookup began, its account or None)."""

    ttl: float
    max_entries: int = 10_000
    _entries: dict[str, tuple[float, Account | None]] = field(default_factory=dict)

    def get(self, key_hash: str, now: float) -> Account | Literal[Missing.KEY] | None:
        """The account of ``key_hash`` (None: no live key), or :data:`MISSING`."""
        entry = self._entries.get(key_hash)
        if entry is None:
            return MISSING
        looked_up_at, account = entry
        if now - looked_up_at >= self.ttl:
            del self._entries[key_hash]
            return MISSING
        return account

    def put(self, key_hash: str, account: Account | None, looked_up_at: float) -> None:
        """Remember the outcome of a lookup that began at ``looked_up_at``."""
        if self.ttl <= 0:
            return
        self._entries.pop(key_hash, None)  # re-inserted last: the dict is oldest first
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key_hash] = (looked_up_at, account)

    def __len__(self) -> int:
        return len(self._entries)
