"""The tenant of every outbox row, indexed, so the relay can claim fairly across tenants.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Rows written before come from their job (every outbox row has one, and the job knows its tenant).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("org_id", sa.String(128), nullable=True))
    op.execute("UPDATE outbox SET org_id = (SELECT jobs.org_id FROM jobs WHERE jobs.id = outbox.job_id)")
    with op.batch_alter_table("outbox") as batch:  # SQLite: NOT NULL needs the table rebuilt
        batch.alter_column("org_id", existing_type=sa.String(128), nullable=False)
    op.create_index("ix_outbox_state_org_id_next_attempt_at", "outbox", ["state", "org_id", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_state_org_id_next_attempt_at", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("org_id")
