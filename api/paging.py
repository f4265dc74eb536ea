"""The query parameters of a list operation, ``limit`` and ``offset``, with their bounds.

Bounded both ways so that every value the OpenAPI document allows is one the
databases take: an offset past a 64-bit integer once answered 500.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

MAX_LIMIT = 200
# Far past any page a caller can reach, far below what a database integer holds.
MAX_OFFSET = 1_000_000

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page, 1 to {MAX_LIMIT}.")]
Offset = Annotated[
    int, Query(ge=0, le=MAX_OFFSET, description=f"Items to skip, 0 to {MAX_OFFSET:,}.")
]
