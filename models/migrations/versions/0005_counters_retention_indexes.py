"""Counters kept with the rows they count; the indexes retention and /metrics read.

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None

DISABLED = sa.text("enabled IS FALSE")
# Frozen copies of models.counters' names and bounds: migrations must not move with the code.
BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 15_000, 30_000)
RESULT = "CASE WHEN status_code BETWEEN 200 AND 299 THEN 'success' ELSE 'failure' END"
BUCKET = (
    "CASE " + " ".join(f"WHEN duration_ms <= {b} THEN '{b}'" for b in BOUNDS_MS) + " ELSE 'inf' END"
)
# The counters start from the rows already there, so that they equal them from now on.
SEED = [
    f"SELECT 'attempts', {RESULT}, count(*) FROM attempt GROUP BY {RESULT}",
    f"SELECT 'attempt_ms_sum', {RESULT}, sum(duration_ms) FROM attempt GROUP BY {RESULT}",
    f"SELECT 'attempt_ms_bucket', {RESULT} || ':' || {BUCKET}, count(*) FROM attempt"
    f" GROUP BY {RESULT} || ':' || {BUCKET}",
    "SELECT 'finished', status, count(*) FROM delivery"
    " WHERE status IN ('succeeded', 'failed', 'cancelled') GROUP BY status",
]


def upgrade() -> None:
    op.create_table(
        "counter",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("key", sa.String(40), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    for select in SEED:
        op.execute(f"INSERT INTO counter (name, key, value) {select}")
    op.create_index("ix_event_created", "event", ["created_at", "account_id", "id"])
    op.create_index(
        "ix_endpoint_disabled", "endpoint", ["id"], sqlite_where=DISABLED, postgresql_where=DISABLED
    )


def downgrade() -> None:
    op.drop_index("ix_endpoint_disabled", "endpoint")
    op.drop_index("ix_event_created", "event")
    op.drop_table("counter")
