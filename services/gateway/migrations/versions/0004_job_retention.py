"""Finds finished meditation jobs oldest first, a batch at a time, for retention's sweep: from an index
rather than a scan.

No new column: a finished job's update_time is when its last event was recorded (see
`JobStore.list_finished_before`).

Revision ID: gateway_0004
Revises: gateway_0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "gateway_0004"
down_revision = "gateway_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds the (update_time, id) index the retention sweep reads."""
    op.create_index("ix_meditation_jobs_update_time_id", "meditation_jobs", ["update_time", "id"])


def downgrade() -> None:
    """Drops the retention index."""
    op.drop_index("ix_meditation_jobs_update_time_id", table_name="meditation_jobs")
