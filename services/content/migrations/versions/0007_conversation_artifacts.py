"""Records what is made from each conversation outside its rows (cached transcripts and images, and the
images' files), so that deleting the conversation erases them too.

Conversations from before this revision have no records: their cached transcripts and images expire with
the cache's TTL instead.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds the conversation_artifacts table."""
    op.create_table(
        "conversation_artifacts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "conversation_id",
            sa.String(32),
            sa.ForeignKey(
                "conversations.id", ondelete="CASCADE", name="fk_conversation_artifacts_conversation_id"
            ),
            nullable=False,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("cache_key", sa.String(300), nullable=False),
        sa.Column("storage_key", sa.String(300), nullable=True),
        sa.UniqueConstraint(
            "conversation_id", "cache_key", name="uq_conversation_artifacts_conversation_key"
        ),
    )
    op.create_index("ix_conversation_artifacts_storage_key", "conversation_artifacts", ["storage_key"])


def downgrade() -> None:
    """Drops the conversation_artifacts table."""
    op.drop_index("ix_conversation_artifacts_storage_key", table_name="conversation_artifacts")
    op.drop_table("conversation_artifacts")
