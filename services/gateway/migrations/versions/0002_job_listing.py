"""Lists an owner's meditation jobs newest first, a page at a time, from an index rather than a scan.

Revision ID: gateway_0002
Revises: gateway_0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "gateway_0002"
down_revision = "gateway_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds the (owner, create_time, id) index ListMeditations' keyset pagination reads."""
    op.create_index(
        "ix_meditation_jobs_owner_create_time_id", "meditation_jobs", ["owner", "create_time", "id"]
    )


def downgrade() -> None:
    """Drops the listing index."""
    op.drop_index("ix_meditation_jobs_owner_create_time_id", table_name="meditation_jobs")
