"""Events, deliveries and attempts; endpoint origin and failure tracking.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OPEN = sa.text("status IN ('pending', 'delivering')")


def _origin(url: str) -> str:
    # A frozen copy of models.endpoints.origin_of: migrations must not move with the code.
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "").lower()
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def upgrade() -> None:
    with op.batch_alter_table("endpoint") as batch:
        batch.add_column(sa.Column("origin", sa.String(300), nullable=False, server_default=""))
        batch.add_column(sa.Column("failing_since", UTC_TIMESTAMP, nullable=True))
    endpoint = sa.table("endpoint", sa.column("id", sa.String), sa.column("url", sa.String),
                        sa.column("origin", sa.String))  # fmt: skip
    connection = op.get_bind()
    for endpoint_id, url in connection.execute(sa.select(endpoint.c.id, endpoint.c.url)).all():
        connection.execute(
            endpoint.update().where(endpoint.c.id == endpoint_id).values(origin=_origin(url))
        )
    with op.batch_alter_table("endpoint") as batch:
        batch.alter_column("origin", server_default=None)

    op.create_table(
        "event",
        sa.Column("account_id", sa.String(36), sa.ForeignKey("account.id"), primary_key=True),
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("type", sa.String(20), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
    )
    op.create_table(
        "delivery",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("event_id", sa.String(100), nullable=False),
        sa.Column("endpoint_id", sa.String(36), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["account_id", "event_id"], ["event.account_id", "event.id"]),
    )
    op.create_index(
        "ix_delivery_open", "delivery", ["priority", "due_at"],
        sqlite_where=OPEN, postgresql_where=OPEN,
    )  # fmt: skip
    op.create_index("ix_delivery_event", "delivery", ["account_id", "event_id"])
    op.create_index("ix_delivery_endpoint", "delivery", ["endpoint_id", "status"])
    op.create_table(
        "attempt",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("delivery_id", BIG_ID, sa.ForeignKey("delivery.id"), nullable=False),
        sa.Column("at", UTC_TIMESTAMP, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
    )
    op.create_index("ix_attempt_delivery_id", "attempt", ["delivery_id"])


def downgrade() -> None:
    op.drop_table("attempt")
    op.drop_table("delivery")
    op.drop_table("event")
    with op.batch_alter_table("endpoint") as batch:
        batch.drop_column("failing_since")
        batch.drop_column("origin")
