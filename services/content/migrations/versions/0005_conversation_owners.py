"""Every conversation belongs to an owner; request ids are unique per owner and bound to their request.

Conversations stored before owners existed get the empty owner, which no authenticated caller has: they are
kept, and nobody can read them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds the owner and the request's hash, and makes request ids unique per owner."""
    with op.batch_alter_table("conversations") as table:
        table.add_column(sa.Column("owner", sa.String(128), nullable=False, server_default=""))
        table.add_column(sa.Column("request_sha256", sa.String(64), nullable=True))
        table.drop_constraint("uq_conversations_request_id", type_="unique")
        table.create_unique_constraint("uq_conversations_owner_request_id", ["owner", "request_id"])
    op.create_index("ix_conversations_owner", "conversations", ["owner"])


def downgrade() -> None:
    """Removes owners; request ids become global again (fails if two owners used the same one)."""
    op.drop_index("ix_conversations_owner", table_name="conversations")
    with op.batch_alter_table("conversations") as table:
        table.drop_constraint("uq_conversations_owner_request_id", type_="unique")
        table.create_unique_constraint("uq_conversations_request_id", ["request_id"])
        table.drop_column("request_sha256")
        table.drop_column("owner")
