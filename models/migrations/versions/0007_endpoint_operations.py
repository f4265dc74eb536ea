"""Endpoint operations: secret rotation, custom headers, the statistics rollup, failing episodes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)
# Frozen copy of models.endpoint_stats' histogram: one column per duration bucket.
BUCKETS = [f"h{i:02d}" for i in range(16)]


def upgrade() -> None:
    # A customer's own secret may be 64 bytes: 94 characters with its prefix.
    with op.batch_alter_table("endpoint") as batch:
        batch.alter_column(
            "secret", existing_type=sa.String(64), type_=sa.String(100), existing_nullable=False
        )
        batch.add_column(sa.Column("previous_secret", sa.String(100), nullable=True))
        batch.add_column(sa.Column("previous_secret_expires_at", UTC_TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("headers", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("failing_notified", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "endpoint_stat",
        sa.Column("endpoint_id", sa.String(36), primary_key=True),
        sa.Column("span", sa.Integer(), primary_key=True),
        sa.Column("start", UTC_TIMESTAMP, primary_key=True),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("succeeded", sa.BigInteger(), nullable=False),
        *[sa.Column(name, sa.BigInteger(), nullable=False) for name in BUCKETS],
        sa.Column("last_success_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("last_failure_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("last_failure_status", sa.Integer(), nullable=True),
        sa.Column("last_failure_error", sa.String(500), nullable=True),
    )
    op.create_index("ix_endpoint_stat_start", "endpoint_stat", ["start"])


def downgrade() -> None:
    op.drop_index("ix_endpoint_stat_start", "endpoint_stat")
    op.drop_table("endpoint_stat")
    with op.batch_alter_table("endpoint") as batch:
        batch.drop_column("failing_notified")
        batch.drop_column("headers")
        batch.drop_column("previous_secret_expires_at")
        batch.drop_column("previous_secret")
        batch.alter_column(
            "secret", existing_type=sa.String(100), type_=sa.String(64), existing_nullable=False
        )
