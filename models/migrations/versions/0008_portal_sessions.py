"""Portal sessions: single-use links into the customer portal and the sessions they open.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "portal_session",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("account_id", sa.String(36), sa.ForeignKey("account.id"), nullable=False),
        sa.Column("link_hash", sa.String(64), nullable=True, unique=True),
        sa.Column("link_expires_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("session_hash", sa.String(64), nullable=True, unique=True),
        sa.Column("expires_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("opened_at", UTC_TIMESTAMP, nullable=True),
    )
    op.create_index("ix_portal_session_account_id", "portal_session", ["account_id"])
    op.create_index("ix_portal_session_expires_at", "portal_session", ["expires_at"])


def downgrade() -> None:
    op.drop_table("portal_session")
