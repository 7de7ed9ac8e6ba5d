"""Who asked for each job, so the limit on a client's running jobs holds across every gateway replica.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds the client column and the index that counts a client's running jobs."""
    with op.batch_alter_table("meditations") as table:
        table.add_column(sa.Column("client", sa.String(128), nullable=True))
    op.create_index("ix_meditations_client_state", "meditations", ["client", "state"])


def downgrade() -> None:
    """Removes the client column."""
    op.drop_index("ix_meditations_client_state", table_name="meditations")
    with op.batch_alter_table("meditations") as table:
        table.drop_column("client")
