"""Per-tenant live collections (migrations move one tenant at a time) and live service switches.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "tenant_collections",
        sa.Column("org_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("live", sa.String(255), nullable=False),
        sa.Column("pending", sa.String(255), nullable=True),
        sa.Column("previous", sa.String(255), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("source", sa.String(255), nullable=True),
        _ts("verified_at", nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        _ts("changed_at"),
        sa.PrimaryKeyConstraint("org_id", "model", name="pk_tenant_collections"),
    )
    op.create_table(
        "service_switches",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("changed_by", sa.String(128), nullable=True),
        _ts("changed_at"),
        sa.PrimaryKeyConstraint("name", name="pk_service_switches"),
    )


def downgrade() -> None:
    op.drop_table("service_switches")
    op.drop_table("tenant_collections")
