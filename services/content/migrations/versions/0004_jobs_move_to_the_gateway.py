"""Meditation jobs and their event logs move to the gateway, the only service that reads or writes them.

The gateway keeps them in tables of its own (`services/gateway/migrations/`); these copies are dropped. Jobs
recorded here are not carried over: a job is a few minutes of work whose videos stay in storage, and the
gateway's history starts empty.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Drops the job tables."""
    op.drop_table("meditation_events")
    op.drop_index("ix_meditations_client_state", table_name="meditations")
    op.drop_index("ix_meditations_state_lease", table_name="meditations")
    op.drop_index("ix_meditations_state", table_name="meditations")
    op.drop_index("ix_meditations_conversation_id", table_name="meditations")
    op.drop_table("meditations")


def downgrade() -> None:
    """Recreates the job tables, empty, as revision 0003 left them."""
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
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("client", sa.String(128), nullable=True),
        sa.UniqueConstraint("request_id", name="uq_meditations_request_id"),
    )
    op.create_index("ix_meditations_conversation_id", "meditations", ["conversation_id"])
    op.create_index("ix_meditations_state", "meditations", ["state"])
    op.create_index("ix_meditations_state_lease", "meditations", ["state", "lease_expires_time"])
    op.create_index("ix_meditations_client_state", "meditations", ["client", "state"])
    op.create_table(
        "meditation_events",
        sa.Column(
            "meditation_id",
            sa.String(32),
            sa.ForeignKey("meditations.id", ondelete="CASCADE", name="fk_meditation_events_meditation_id"),
            primary_key=True,
        ),
        sa.Column("sequence", sa.Integer, primary_key=True),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
    )
