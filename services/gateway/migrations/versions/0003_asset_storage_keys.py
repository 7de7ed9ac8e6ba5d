"""A job keeps its assets' storage keys, never their URIs: URIs are made for each reader when read (signed and
short-lived where storage signs), so none can expire in the database or outlive a reader's access.

Rows written before this revision keep the URIs they hold, under the renamed columns; a reader gets such a
value (it has a scheme) as it is.

Revision ID: gateway_0003
Revises: gateway_0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "gateway_0003"
down_revision = "gateway_0002"
branch_labels = None
depends_on = None

_RENAMED = {
    "image_uri": "image_storage_key",
    "narration_uri": "narration_storage_key",
    "quick_video_uri": "quick_video_storage_key",
    "enhanced_video_uri": "enhanced_video_storage_key",
}


def upgrade() -> None:
    """Renames the four asset columns."""
    with op.batch_alter_table("meditation_jobs") as table:
        for old, new in _RENAMED.items():
            table.alter_column(old, new_column_name=new)


def downgrade() -> None:
    """Renames them back (the values stay keys: an older gateway would hand those out as URIs)."""
    with op.batch_alter_table("meditation_jobs") as table:
        for old, new in _RENAMED.items():
            table.alter_column(new, new_column_name=old)
