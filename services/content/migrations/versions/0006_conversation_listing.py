"""Lists an owner's conversations newest first, a page at a time, from an index rather than a scan.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds the (owner, create_time, id) index ListConversations' keyset pagination reads."""
    op.create_index("ix_conversations_owner_create_time_id", "conversations", ["owner", "create_time", "id"])


def downgrade() -> None:
    """Drops the listing index."""
    op.drop_index("ix_conversations_owner_create_time_id", table_name="conversations")
