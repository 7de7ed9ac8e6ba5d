"""Meditation jobs, their event logs and API keys, owned by the gateway (jobs lived in the content service
until its revision 0004).

Revision ID: gateway_0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "gateway_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Creates the job and event tables."""
    op.create_table(
        "meditation_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("conversation", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("request_sha256", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("image_aspect", sa.String(16), nullable=False),
        sa.Column("skip_cache", sa.Boolean, nullable=False),
        sa.Column("transcript", sa.Text, nullable=False),
        sa.Column("image_uri", sa.Text, nullable=False),
        sa.Column("narration_uri", sa.Text, nullable=False),
        sa.Column("quick_video_uri", sa.Text, nullable=False),
        sa.Column("enhanced_video_uri", sa.Text, nullable=False),
        sa.Column("failure_message", sa.Text, nullable=False),
        sa.Column("last_sequence", sa.Integer, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("holder", sa.String(64), nullable=True),
        sa.Column("lease_expires_time", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("owner", "request_id", name="uq_meditation_jobs_owner_request_id"),
    )
    op.create_index("ix_meditation_jobs_state_lease", "meditation_jobs", ["state", "lease_expires_time"])
    op.create_index("ix_meditation_jobs_owner_state", "meditation_jobs", ["owner", "state"])
    op.create_table(
        "meditation_job_events",
        sa.Column(
            "job_id",
            sa.String(32),
            sa.ForeignKey("meditation_jobs.id", ondelete="CASCADE", name="fk_meditation_job_events_job_id"),
            primary_key=True,
        ),
        sa.Column("sequence", sa.Integer, primary_key=True),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoke_time", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_keys_owner", "api_keys", ["owner"])


def downgrade() -> None:
    """Drops the job, event and API key tables."""
    op.drop_index("ix_api_keys_owner", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("meditation_job_events")
    op.drop_index("ix_meditation_jobs_owner_state", table_name="meditation_jobs")
    op.drop_index("ix_meditation_jobs_state_lease", table_name="meditation_jobs")
    op.drop_table("meditation_jobs")
