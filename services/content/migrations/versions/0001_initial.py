"""Conversations, messages, meditation jobs and their event logs.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Creates the first schema."""
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("title", sa.String(200), nullable=False, server_default=""),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("request_id", name="uq_conversations_request_id"),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "conversation_id",
            sa.String(32),
            sa.ForeignKey("conversations.id", ondelete="CASCADE", name="fk_messages_conversation_id"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        # Also the index that reads a conversation's messages in order.
        sa.UniqueConstraint("conversation_id", "position", name="uq_messages_conversation_id_position"),
    )
    op.create_table(
        "meditations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.String(32),
            sa.ForeignKey("conversations.id", name="fk_meditations_conversation_id"),
            nullable=False,
        ),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("options_json", sa.Text, nullable=False),
        sa.Column("transcript", sa.Text, nullable=False),
        sa.Column("image_uri", sa.Text, nullable=False),
        sa.Column("narration_uri", sa.Text, nullable=False),
        sa.Column("quick_video_uri", sa.Text, nullable=False),
        sa.Column("enhanced_video_uri", sa.Text, nullable=False),
        sa.Column("failure_message", sa.Text, nullable=False),
        sa.Column("last_sequence", sa.Integer, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        # Enforces AIP-155 idempotency in the database, also across gateway replicas.
        sa.UniqueConstraint("request_id", name="uq_meditations_request_id"),
    )
    op.create_index("ix_meditations_conversation_id", "meditations", ["conversation_id"])
    # Finding unfinished jobs (resuming after a restart) reads by state.
    op.create_index("ix_meditations_state", "meditations", ["state"])
    op.create_table(
        "meditation_events",
        sa.Column(
            "meditation_id",
            sa.String(32),
            sa.ForeignKey("meditations.id", ondelete="CASCADE", name="fk_meditation_events_meditation_id"),
            primary_key=True,
        ),
        # The primary key (meditation_id, sequence) is the index WatchMeditation's range reads use.
        sa.Column("sequence", sa.Integer, primary_key=True),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drops everything the first schema made."""
    op.drop_table("meditation_events")
    op.drop_index("ix_meditations_state", table_name="meditations")
    op.drop_index("ix_meditations_conversation_id", table_name="meditations")
    op.drop_table("meditations")
    op.drop_table("messages")
    op.drop_table("conversations")
