"""The delivery log: each attempt keeps the start of its answer; indexes the log walks.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("attempt", sa.Column("response_body", sa.Text(), nullable=True))
    # Newest first by creation time, per account, status or endpoint (models.delivery_log).
    op.drop_index("ix_delivery_endpoint", "delivery")
    op.create_index(
        "ix_delivery_endpoint", "delivery", ["endpoint_id", "status", "created_at", "id"]
    )
    op.create_index("ix_delivery_log", "delivery", ["account_id", "created_at", "id"])
    op.create_index(
        "ix_delivery_log_status", "delivery", ["account_id", "status", "created_at", "id"]
    )
    op.create_index("ix_delivery_log_endpoint", "delivery", ["endpoint_id", "created_at", "id"])
    # One account's events of a time window, for recovery (models.recovery).
    op.create_index("ix_event_account_created", "event", ["account_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_event_account_created", "event")
    op.drop_index("ix_delivery_log_endpoint", "delivery")
    op.drop_index("ix_delivery_log_status", "delivery")
    op.drop_index("ix_delivery_log", "delivery")
    op.drop_index("ix_delivery_endpoint", "delivery")
    op.create_index("ix_delivery_endpoint", "delivery", ["endpoint_id", "status"])
    with op.batch_alter_table("attempt") as batch:
        batch.drop_column("response_body")
